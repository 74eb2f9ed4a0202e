// Export of a quantized model as a compressed-tensors checkpoint (what vLLM serves and what
// transformers loads), and the reader that loads such a checkpoint back for evaluation.
//
// Formats written (see tests/interop/README.md for how each reader treats them):
// - W8A8 (8-bit symmetric weights per channel or tensor; 8-bit symmetric activations per token
//   dynamic or per tensor static): "int-quantized": weight I8 [out, in], weight_scale [out, 1]
//   or [1], input_scale [1] for static activations.
// - W8A16 (8-bit symmetric weights per channel, activations unquantized): "pack-quantized":
//   weight_packed I32 [out, in / 4] (q + 128, four per word, least significant first),
//   weight_shape I64 [2], weight_scale [out, 1]. vLLM runs int8 weight-only only in this format
//   (its int-quantized loader asserts that weight-only schemes are float), and transformers infers
//   pack-quantized for an int weight-only scheme whatever the top-level format says.
// Scales and every unquantized tensor are stored in ExportScheme::dtype.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/model_config.h"
#include "model/weights.h"
#include "stages/quantized_block.h"

namespace sq::stages {

struct ExportScheme {
  int weight_bits = 8;
  bool weight_symmetric = true;
  enum class WeightStrategy { channel, tensor, group } weight_strategy = WeightStrategy::channel;
  std::int64_t group_size = 0;
  bool quantize_activations = true;
  int activation_bits = 8;
  bool activation_symmetric = true;
  enum class ActivationStrategy { token, tensor } activation_strategy = ActivationStrategy::token;
  bool activation_dynamic = true;
  // dtype of scales and every non-quantized tensor (norms, embeddings, lm_head, biases).
  DType dtype = DType::bf16;
};

// Throws sq::Error (one line naming the setting and why) for a scheme compressed-tensors cannot
// express or vLLM cannot run. Accepted: 8-bit symmetric weights, per channel or per tensor, with
// 8-bit symmetric activations per token (dynamic) or per tensor (static); or 8-bit symmetric
// per-channel weights alone (W8A16). Refused besides: dynamic per-tensor activations (vLLM has
// no int8 kernel for them) and per-tensor W8A16 (vLLM's weight-only int kernels are per channel
// or group).
void check_exportable(const ExportScheme& scheme);

// "int-quantized" or "pack-quantized": the format check_exportable's scheme is written in.
std::string export_format(const ExportScheme& scheme);

// Shard size of exported checkpoints unless a caller asks otherwise (transformers' default).
inline constexpr std::uint64_t kExportMaxShardBytes = std::uint64_t{5} << 30;

// Writes a compressed-tensors checkpoint of `source` with its blocks replaced by quantized ones
// to out_dir (created; refused when it exists and is not empty):
// - config.json: io::to_hf_config(source.config()) with torch_dtype = scheme.dtype, plus
//   quantization_config (only fields the compressed-tensors pydantic models accept);
// - tensors under model::TensorNames::canonical names, in model::model_tensors order:
//   embeddings, final norm and lm_head from `source`, norms and biases from the blocks' weights,
//   all converted to scheme.dtype; per linear the integer weight, weight_scale and (static
//   activations) input_scale; shards of at most max_shard_bytes (a larger tensor gets a shard
//   of its own);
// - every other regular file of the source directory that is not weights or config
//   (tokenizer.json, tokenizer_config.json, generation_config.json, ...), byte for byte.
// Refuses a block the scheme cannot store as it is, before any of that block's tensors is
// written: among others a scale that scheme.dtype cannot represent exactly (the pipeline rounds
// scales to the export dtype before quantizing, and the checkpoint must be exactly what
// ShardQuant evaluated). Every file is written atomically and config.json last; on any failure
// (a refusal, an I/O error, an exception from the loader, which propagates unchanged) the files
// written so far are removed again, so out_dir never holds a config.json without its weights
// and is left as it was (empty, or absent when the export created it).
//
// Blocks come from `load_block`, called with layer = 0, 1, ..., num_layers - 1 in increasing
// order, each layer exactly once, while the tensors are written. The exporter keeps a block
// only as long as it needs it: it releases the previous block before it asks for the next one,
// so peak memory is at most one QuantizedBlock plus the tensors of the shard being written,
// converted to scheme.dtype (integer weights, which need no conversion, are shared with their
// block rather than copied; source tensors already in scheme.dtype are views of the mapped
// source files). A 70B model whose blocks do not fit in one process is exported this way, its
// blocks loaded one at a time.
using BlockLoader = std::function<QuantizedBlock(int layer)>;
void export_compressed_tensors(const model::Model& source, const BlockLoader& load_block,
                               const ExportScheme& scheme, const std::string& out_dir,
                               std::uint64_t max_shard_bytes = kExportMaxShardBytes);

// The same, from blocks already in memory (blocks[i] is layer i; refused unless there is one
// per layer). The bytes written are those of the loader overload given blocks[layer].
void export_compressed_tensors(const model::Model& source,
                               const std::vector<QuantizedBlock>& blocks,
                               const ExportScheme& scheme, const std::string& out_dir,
                               std::uint64_t max_shard_bytes = kExportMaxShardBytes);

// A compressed-tensors checkpoint read back, in the form the quantized forward runs.
struct LoadedExport {
  io::ModelConfig config;  // without the quantization_config
  ExportScheme scheme;     // dtype: the dtype the scales are stored in
  // Per block: norms and biases in FP32; linear weights dequantized (q * scale, in FP32); per
  // linear weight_q (I8 [out, in]), weight_scale (F32 [out] or [1]), input_scale (F32 [1],
  // static activations only).
  std::vector<QuantizedBlock> blocks;
  model::EmbeddingWeights embedding;  // FP32
  model::HeadWeights head;            // FP32
};

// Reads a checkpoint written by export_compressed_tensors (or by another tool, when it stays
// within the schemes check_exportable accepts). quantization_config is parsed strictly: a key,
// value or tensor it does not understand is refused with an error naming it.
LoadedExport load_compressed_tensors(const std::string& dir);

}  // namespace sq::stages
