// One mechanism for every equivalent transformation (DESIGN §3): SmoothQuant's scale, OS+'s
// shift, RPTQ's permutation, QLLM's split and merge and LLM-FP4's power-of-two scale are all a
// change of basis on the channels between a producer and its consumers. Methods only choose the
// numbers; apply_transform folds them into a block so that its FP output is unchanged.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "io/model_config.h"
#include "model/weights.h"

namespace sq::stages {

// A change of basis on the channels between a producer and its consumers, applied to the
// producer's output x (width in_channels) as:
//   g_k = x[index[k]] / T(index[k])     gather with repeats; T(j) = how many slots read channel j
//                                       (a split divides the channel among its copies)
//   m_i = mean of g_k over slots k with merge[k] == i      (merge map; lossy unless the merged
//                                                           channels are equal)
//   x'_i = (m_i - shift_i) / scale_i
// Empty vectors mean identity (index: all channels in order; merge: slot k -> channel k; scale 1;
// shift 0).
struct ChannelTransform {
  std::int64_t in_channels = 0;
  std::vector<std::int64_t> index, merge;
  std::vector<float> scale, shift;

  std::int64_t slots() const;         // index.size(), or in_channels without an index
  std::int64_t out_channels() const;  // max(merge) + 1, or slots() without a merge
  static ChannelTransform identity(std::int64_t channels);
  static ChannelTransform scaling(std::vector<float> scale);
  // x' = (x - shift) / scale; scale may be empty (1).
  static ChannelTransform shifting(std::vector<float> shift, std::vector<float> scale);
  static ChannelTransform permutation(std::vector<std::int64_t> order);  // x'_k = x[order[k]]
  bool is_diagonal() const;  // no index map and no merge (scale/shift only)
  // Sizes, index in range, every input channel used at least once, merge covers 0..out-1,
  // scales nonzero and finite, shifts finite; throws sq::Error.
  void validate() const;
  // Reference semantics above: x [rows, in_channels] -> out [rows, out_channels()].
  void apply(const float* x, std::int64_t rows, float* out) const;
};

// Where a transform sits in a decoder block.
enum class Boundary { attn_norm_to_qkv, mlp_norm_to_mlp, v_to_o, up_to_down };
std::string_view boundary_name(Boundary boundary);
// Inverse of boundary_name; throws sq::Error naming the text when it is not a boundary.
Boundary boundary_from_name(std::string_view name);

// A transform as a method chose and folded it: methods return these so that a checkpoint can
// record them and a resume can re-apply them to the original weights bit for bit.
struct AppliedTransform {
  Boundary boundary;
  ChannelTransform transform;
};

// Folds t into the producer and consumers at `boundary` of block `w` so that the block's FP
// output is unchanged (exactly for scale/shift/permutation/split; merges change it by the
// predicted amount). Throws sq::Error, naming the boundary and the reason, when t cannot be
// folded there; `w` is then left unchanged. New tensors are allocated for everything changed,
// so `w` may hold read-only views of a checkpoint and copies of `w` are not affected.
//   attn_norm_to_qkv, mlp_norm_to_mlp: producer the norm (a diagonal t folds into its weight and
//     bias; otherwise the norm gets a runtime output map, composed with any map it has);
//     consumers q,k,v / gate,up (OPT: fc1). A shift needs a LayerNorm (a bias to absorb it).
//   v_to_o: producer v's rows, consumer o's columns for every q head of the kv group; scale,
//     shift and permutations within a head only.
//   up_to_down: producer up's rows (SwiGLU: gate rows gathered alongside; OPT: fc1), consumer
//     down's columns. SwiGLU: scale, permutation, split. ReLU: positive scale, permutation,
//     split, merge. GELU: permutation only. Never a shift.
void apply_transform(const io::ModelConfig& config, model::BlockWeights& w, Boundary boundary,
                     const ChannelTransform& t);

}  // namespace sq::stages
