// The FP32 forward pass, one piece at a time: embedding, one decoder block, head. Callers choose
// the loop order: evaluation and calibration run block-outer (each block's weights are mapped
// once and applied to every sequence); generation runs token-outer with a KV cache.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"
#include "kernels/cpu/ops.h"
#include "model/weights.h"

namespace sq::model {

// n_seq sequences of seq_len new tokens each, laid out sequence-major: row s * seq_len + t.
// `past` tokens per sequence are already in the KV cache (0 without one).
struct Batch {
  std::int64_t n_seq = 1;
  std::int64_t seq_len = 0;
  std::int64_t past = 0;
  std::int64_t tokens() const { return n_seq * seq_len; }
};

// Keys and values of every layer for n_seq sequences of up to max_len tokens.
struct KVCache {
  KVCache(const io::ModelConfig& config, std::int64_t n_seq, std::int64_t max_len);
  std::vector<Tensor> k, v;  // per layer, f32 [n_seq, max_len, kv_dim]
  std::int64_t n_seq, max_len;
};

// RoPE inverse frequencies for the config's rope type (default, linear, llama3), as HF computes
// them; empty for models without RoPE.
std::vector<float> rope_inv_freq(const io::ModelConfig& config);

// f32 [batch.tokens(), hidden]. Throws naming the position of any id outside the vocabulary.
Tensor embed(const io::ModelConfig& config, const EmbeddingWeights& weights,
             std::span<const std::uint32_t> ids, const Batch& batch);

// The RoPE kernel is a parameter so tests can show that the convention matters (HF LLaMA
// checkpoints use rotate-half; the interleaved-pair kernel must not match them).
using RopeKernel = void (*)(float* x, std::int64_t tokens, std::int64_t heads,
                            std::int64_t head_dim, std::int64_t row_stride,
                            const std::int64_t* positions, const float* inv_freq);

// Where activations enter a matrix product inside a block. The linear inputs are what weight-
// activation quantization quantizes and calibration observes; q/k/v are the attention matmul
// inputs (after RoPE).
enum class Site { qkv_in, o_in, mlp_in, down_in, attn_q, attn_k, attn_v };
inline constexpr int kSiteCount = 7;
std::string_view site_name(Site site);

// Sees (and may change in place) each activation matrix [rows, cols] right before it is consumed:
// calibration observes, quantized forward fake-quantizes. Rows are tokens, sequence-major.
class ActivationHook {
 public:
  virtual ~ActivationHook() = default;
  virtual void at(Site site, float* x, std::int64_t rows, std::int64_t cols) = 0;
};

struct BlockContext {
  std::span<const float> inv_freq;  // from rope_inv_freq(); empty without RoPE
  KVCache* cache = nullptr;         // with a cache, `layer` picks its slot
  int layer = 0;
  RopeKernel rope = &cpu::rope_rotate_half;
  ActivationHook* hook = nullptr;
};

// The attention kernels' shape for one sequence of a block: tq new queries over tk keys (the
// last tq of them are the new tokens), q rows of q_width and k/v rows of kv_width floats, scaled
// by 1/sqrt(head_dim).
cpu::AttentionShape attention_shape(const io::ModelConfig& config, std::int64_t tq, std::int64_t tk,
                                    std::int64_t q_width, std::int64_t kv_width);

// The attention core of a block: RoPE on q and k (in place), the attention-input hooks, then
// causal GQA attention per sequence (through the KV cache when there is one). q is
// [tokens, heads * head_dim], k and v [tokens, kv_heads * head_dim]; returns [tokens, q width].
Tensor attend(const io::ModelConfig& config, Tensor& q, Tensor& k, Tensor& v, const Batch& batch,
              const BlockContext& context);

// hidden: f32 [batch.tokens(), hidden], updated in place (the residual stream).
void block_forward(const io::ModelConfig& config, const BlockWeights& weights, const Batch& batch,
                   Tensor& hidden, const BlockContext& context = {});

// f32 [rows, vocab] from `rows` rows of final hidden states.
Tensor head_logits(const io::ModelConfig& config, const HeadWeights& weights, const float* hidden,
                   std::int64_t rows);

// Applies a norm (RMSNorm or LayerNorm by config) to rows of width `cols`; `out` has rows of
// norm.out_features() (cols, unless the norm carries an output map).
void apply_norm(const io::ModelConfig& config, const Norm& norm, const float* x, std::int64_t rows,
                std::int64_t cols, float* out);

}  // namespace sq::model
