// The memory and disk model behind `shardquant plan`. Every figure follows what the code does
// with the memory (read against pipeline/runner.cpp, pipeline/block_state.cpp, model/forward.cpp,
// model/weights.cpp, stages/{smooth,suppress,channel_transform,quantize,export}.cpp and
// io/checkpoint_store.cpp); the comments say which allocation each term stands for.
#include "pipeline/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/token_file.h"
#include "kernels/cpu/quant.h"
#include "model/weights.h"

namespace sq::pipeline {
namespace {

namespace fs = std::filesystem;
using i64 = std::int64_t;
using u64 = std::uint64_t;
using model::LinearRole;
using model::TensorKind;

// --- constants mirrored from the code they describe ---------------------------------------------

// io/checkpoint_store.cpp: commit() re-reads every dataset in pieces of whole rows of at most this
// many bytes (kVerifyBytes), into one buffer; HDF5 chunks are at most 1 MiB (kChunkBytes).
constexpr u64 kVerifyBytes = u64{64} << 20;
constexpr u64 kHdf5ChunkBytes = u64{1} << 20;
// HDF5 files as io::CheckpointWriter writes them (format V18, fletcher32, chunked), measured on
// block files of synthetic models (37 and 41 datasets in 16 groups: ~2.65 KiB per dataset with
// its attributes and its share of a group) and on single datasets of 1 to 1024 chunks (54 to 67 B
// per chunk: B-tree entry and checksum); the root attributes take < 2 KiB. Rounded up.
constexpr u64 kHdf5FileOverhead = 2048;
constexpr u64 kHdf5DatasetOverhead = 2720;
constexpr u64 kHdf5ChunkOverhead = 64;

constexpr u64 kF32 = 4;
// What a CUDA context with cuBLASLt's kernels loaded holds on the device beyond our allocations
// (an estimate: a few hundred MiB on Hopper, depending on the driver and the modules loaded).
constexpr u64 kCudaContextBytes = u64{512} << 20;

// pipeline/runner.cpp process_block: the stage's writer (replica 0) hands the loaded FP32 block
// to its stages and drops its own handle, so a tensor a stage replaces is freed at once; the
// other replicas keep the loaded block until they rebuild the finished one from its file.
constexpr bool kWriterKeepsLoadedBlock = false;
// model/weights.cpp Model::load: a tensor converted to FP32 (f16/bf16 checkpoints) has its
// mapped pages released once converted; f32 tensors are used in place and stay mapped for the
// process's life (Checkpoint keeps its shards mapped).
constexpr bool kLoadReleasesConvertedPages = true;

u64 u(i64 v) { return static_cast<u64>(std::max<i64>(v, 0)); }

std::string bytes_str(u64 bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int i = 0;
  while (v >= 1024.0 && i < 5) {
    v /= 1024.0;
    ++i;
  }
  return i == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[i]);
}

std::uint32_t bits(std::initializer_list<Phase> phases) {
  std::uint32_t b = 0;
  for (Phase p : phases) b |= 1u << static_cast<int>(p);
  return b;
}

// --- the model's shapes ---------------------------------------------------------------------

struct LinearShape {
  bool present = false, bias = false;
  i64 rows = 0, cols = 0;
  u64 weights() const { return u(rows) * u(cols); }
};

struct BlockShape {
  std::array<LinearShape, model::kAllLinearRoles.size()> linear;
  u64 params = 0;       // every tensor of the block
  u64 norm_params = 0;  // norm weights and biases
  const LinearShape& at(LinearRole r) const { return linear[static_cast<int>(r)]; }
  u64 linear_weights() const {
    u64 n = 0;
    for (const auto& l : linear) n += l.weights();
    return n;
  }
};

struct ModelShape {
  std::vector<BlockShape> blocks;
  u64 embedding_params = 0;  // token (and position) embeddings, project_in
  u64 head_params = 0;       // final norm, project_out, lm_head (the embedding again when tied)
  u64 stored_params = 0;     // every tensor the checkpoint stores
  u64 embedding_stored = 0, head_stored = 0;
  std::vector<model::TensorSpec> specs;
};

ModelShape model_shape(const io::ModelConfig& c) {
  ModelShape m;
  m.specs = model::model_tensors(c, model::TensorNames::canonical(c));
  m.blocks.resize(static_cast<std::size_t>(c.num_layers));
  for (const auto& t : m.specs) {
    const u64 n = u(shape_numel(t.shape));
    m.stored_params += n;
    if (t.layer >= 0) {
      BlockShape& b = m.blocks[static_cast<std::size_t>(t.layer)];
      b.params += n;
      auto& l = b.linear[static_cast<int>(t.linear)];
      switch (t.kind) {
        case TensorKind::linear_weight:
          l.present = true;
          l.rows = t.shape[0];
          l.cols = t.shape[1];
          break;
        case TensorKind::linear_bias:
          l.bias = true;
          break;
        default:
          b.norm_params += n;
          break;
      }
      continue;
    }
    switch (t.kind) {
      case TensorKind::embed_tokens:
        m.embedding_params += n;
        m.embedding_stored += n;
        if (c.tie_word_embeddings) m.head_params += n;  // logits need the matrix too
        break;
      case TensorKind::embed_positions:
      case TensorKind::project_in:
        m.embedding_params += n;
        m.embedding_stored += n;
        break;
      default:
        m.head_params += n;
        m.head_stored += n;
        break;
    }
  }
  return m;
}

// --- block memory ---------------------------------------------------------------------------

// model/forward.cpp block_forward over T tokens of sequences of S: xn [T, H], q [T, qd], k and v
// [T, kvd] and the attention output [T, qd] live to the end of the block; attend() adds an
// [S, S] score buffer; the MLP adds o [T, H], up [T, F] and (SwiGLU) gate [T, F].
u64 block_activation_bytes(const io::ModelConfig& c, const BlockShape& b, i64 T, i64 S) {
  const u64 H = u(c.hidden_size), qd = u(b.at(LinearRole::q).rows),
            kvd = u(b.at(LinearRole::k).rows), F = u(b.at(LinearRole::up).rows);
  const u64 t = u(T);
  const u64 attention = t * (H + qd + 2 * kvd + qd) * kF32 + u(S) * u(S) * kF32;
  const u64 mlp = t * (H + qd + 2 * kvd + qd + H + F * (c.gated_mlp() ? 2 : 1)) * kF32;
  return T == 0 ? 0 : std::max(attention, mlp);
}

std::string activation_formula(const io::ModelConfig& c, const BlockShape& b, i64 T, i64 S) {
  return fmt::format(
      "{} tokens x (2 hidden {} + 2 q {} + 2 kv {} + {} x ffn {}) x 4 B, or the attention's "
      "[{}, {}] scores if larger",
      T, c.hidden_size, b.at(LinearRole::q).rows, b.at(LinearRole::k).rows, c.gated_mlp() ? 2 : 1,
      b.at(LinearRole::up).rows, S, S);
}

// Bytes of the integer codes and scales quantize_weights adds for one linear, as QuantizedLinear
// holds them: weight_q i8 [out, in], weight_scale f32 (and the zero points, asymmetric), the
// static input scale.
struct CodeBytes {
  u64 codes = 0, scales = 0, n_scales = 0;
};
CodeBytes code_bytes(const LinearShape& l, const io::Scheme& s) {
  CodeBytes cb;
  if (!l.present) return cb;
  cpu::QuantLayout layout;
  switch (s.weights.granularity) {
    case io::WeightGranularity::channel:
      layout.granularity = cpu::Granularity::row;
      break;
    case io::WeightGranularity::tensor:
      layout.granularity = cpu::Granularity::tensor;
      break;
    case io::WeightGranularity::group:
      layout.granularity = cpu::Granularity::group;
      layout.group_size = s.weights.group_size;
      break;
  }
  cb.n_scales = u(cpu::num_qparams(l.rows, l.cols, layout));
  cb.codes = l.weights();
  cb.scales = cb.n_scales * kF32 * (s.weights.symmetric ? 1 : 2);
  const bool static_input = s.activations && !s.activations->dynamic;
  if (static_input) cb.scales += kF32 * (s.activations->symmetric ? 1 : 2);
  return cb;
}

// The FP32 tensor a transform gives a consumer linear: weight and (kept or created) bias.
u64 transformed_linear_bytes(const LinearShape& l, bool shift) {
  return l.weights() * kF32 + ((l.bias || shift) ? u(l.rows) * kF32 : 0);
}

// Follows the FP32 tensors of one block through transforms and quantization, as shared tensor
// handles behave: a replaced tensor is freed unless something else (the runner's `fp`) holds it.
class BlockSim {
 public:
  // fp_held: the original weights stay alive elsewhere (counted by the block_fp32 term), so only
  // tensors allocated here count. Otherwise the block was handed over: its FP32 tensors (when
  // owned_fp32; an f32 checkpoint's are views of the mapping) count until they are replaced.
  BlockSim(const io::ModelConfig& c, const BlockShape& b, bool fp_held, bool owned_fp32)
      : c_(c), b_(b) {
    if (fp_held || !owned_fp32) return;
    for (std::size_t i = 0; i < weight_.size(); ++i) {
      weight_[i] = b.linear[i].weights() * kF32;
      bias_[i] = b.linear[i].bias ? u(b.linear[i].rows) * kF32 : 0;
    }
    norm_[0] = norm_[1] = b.norm_params * kF32 / 2;
  }
  u64 live() const {
    u64 n = norm_[0] + norm_[1] + codes_;
    for (std::size_t i = 0; i < weight_.size(); ++i) n += weight_[i] + bias_[i];
    return n;
  }
  void see(u64 extra) { peak_ = std::max(peak_, live() + extra); }
  void reset_peak() { peak_ = live(); }
  u64 peak() const { return peak_; }
  u64 norms() const { return norm_[0] + norm_[1]; }
  u64 codes() const { return codes_; }

  // apply_transform at a norm boundary (stages/channel_transform.cpp): a new norm, then each
  // consumer folded into a new vector and copied into a new tensor (both alive for a moment);
  // the block's old tensors are released only at the end.
  void apply(bool attention, bool shift) {
    std::vector<LinearRole> consumers;
    if (attention)
      consumers = {LinearRole::q, LinearRole::k, LinearRole::v};
    else if (c_.gated_mlp())
      consumers = {LinearRole::gate, LinearRole::up};
    else
      consumers = {LinearRole::up};
    const u64 norm = u(c_.hidden_size) * kF32 * ((c_.norm_bias || shift) ? 2 : 1);
    u64 fresh = norm;
    for (LinearRole r : consumers) {
      const LinearShape& l = b_.at(r);
      const u64 n = transformed_linear_bytes(l, shift);
      see(fresh + 2 * n);
      fresh += n;
    }
    norm_[attention ? 0 : 1] = norm;
    for (LinearRole r : consumers) {
      const LinearShape& l = b_.at(r);
      weight_[static_cast<int>(r)] = l.weights() * kF32;
      bias_[static_cast<int>(r)] = (l.bias || shift) ? u(l.rows) * kF32 : 0;
    }
  }
  // quantize_block_weights (stages/quantize.cpp) and read_block_state: per linear, the codes and
  // scales are allocated, then the dequantized FP32 weight, before the old weight is released.
  void quantize(const io::Scheme& s) {
    for (LinearRole r : model::kAllLinearRoles) {
      const LinearShape& l = b_.at(r);
      if (!l.present) continue;
      const CodeBytes cb = code_bytes(l, s);
      codes_ += cb.codes + cb.scales;
      // quantize_linear's i32 zero points and dequantized_weight's zero vector: n_scales each.
      see(l.weights() * kF32 + 2 * cb.n_scales * 4);
      weight_[static_cast<int>(r)] = l.weights() * kF32;
    }
  }

 private:
  const io::ModelConfig& c_;
  const BlockShape& b_;
  std::array<u64, model::kAllLinearRoles.size()> weight_{}, bias_{};
  std::array<u64, 2> norm_{};  // attention norm, MLP norm
  u64 codes_ = 0, peak_ = 0;
};

// stages/suppress.cpp os_plus_block: the candidate consumers (weights fake-quantized into new
// tensors, with a bias), the transformed input, the reference and candidate outputs, per site.
u64 os_plus_search_bytes(const io::ModelConfig& c, const BlockShape& b, bool attention, i64 T1,
                         i64 S) {
  const u64 H = u(c.hidden_size), t = u(T1);
  const auto lin = [&](LinearRole r) { return transformed_linear_bytes(b.at(r), true); };
  if (attention) {
    const u64 qd = u(b.at(LinearRole::q).rows), kvd = u(b.at(LinearRole::k).rows);
    return lin(LinearRole::q) + lin(LinearRole::k) + lin(LinearRole::v) +
           t * (H + qd /*ref*/ + qd + 2 * kvd /*Q K V*/ + qd /*attention*/) * kF32 +
           u(S) * u(S) * kF32;
  }
  const u64 F = u(b.at(LinearRole::up).rows);
  if (c.gated_mlp()) return lin(LinearRole::gate) + lin(LinearRole::up) + t * (H + 3 * F) * kF32;
  return lin(LinearRole::up) + t * (H + 2 * F) * kF32;
}

// --- HDF5 files -----------------------------------------------------------------------------

// io/checkpoint_store.cpp layout_for: chunks of whole trailing rows up to 1 MiB.
u64 hdf5_chunks(const Shape& shape, u64 elem) {
  if (shape.empty() || shape_numel(shape) == 0) return 1;
  const i64 budget = std::max<i64>(1, static_cast<i64>(kHdf5ChunkBytes / elem));
  u64 chunks = 1;
  i64 inner = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    const i64 c = std::clamp<i64>(budget / inner, 1, shape[static_cast<std::size_t>(d)]);
    chunks *= u((shape[static_cast<std::size_t>(d)] + c - 1) / c);
    inner *= c;
  }
  return chunks;
}

struct Hdf5File {
  u64 payload = 0, datasets = 0, chunks = 0;
  u64 largest_verify = 0;  // commit()'s read-back buffer for the largest dataset
  void add(const Shape& shape, u64 elem) {
    const u64 bytes = u(shape_numel(shape)) * elem;
    payload += bytes;
    ++datasets;
    chunks += hdf5_chunks(shape, elem);
    const u64 rows = shape.empty() ? 1 : u(shape[0]);
    if (rows == 0 || bytes == 0) return;
    const u64 row = bytes / rows;
    const u64 step = std::max<u64>(1, kVerifyBytes / row);
    largest_verify = std::max(largest_verify, std::min(step, rows) * row);
  }
  u64 bytes() const {
    return payload + kHdf5FileOverhead + datasets * kHdf5DatasetOverhead +
           chunks * kHdf5ChunkOverhead;
  }
};

// pipeline/block_state.cpp block_checkpoint after the recipe's last stage: statistics of every
// site, the transforms, the integer weights with their scales (the OS+ search inputs are gone by
// then).
Hdf5File block_file(const io::ModelConfig& c, const BlockShape& b, const io::Recipe& r) {
  Hdf5File f;
  const i64 H = c.hidden_size, qd = b.at(LinearRole::q).rows, kvd = b.at(LinearRole::k).rows,
            F = b.at(LinearRole::up).rows;
  for (i64 ch : {H, qd, H, F, qd, kvd, kvd})  // qkv_in o_in mlp_in down_in attn_q attn_k attn_v
    for (int v = 0; v < 3; ++v) f.add({ch}, kF32);
  for (const auto& s : r.stages) {
    if (s.kind == io::StageKind::smoothquant) {
      f.add({H}, kF32);  // scale, norm -> q/k/v
      f.add({H}, kF32);  // scale, norm -> gate/up
    } else if (s.kind == io::StageKind::os_plus) {
      for (int i = 0; i < 2; ++i) {
        f.add({H}, kF32);  // shift
        f.add({H}, kF32);  // scale
      }
    }
  }
  const auto& s = r.scheme;
  for (const auto& l : b.linear) {
    if (!l.present) continue;
    const CodeBytes cb = code_bytes(l, s);
    f.add({l.rows, l.cols}, 1);
    f.add({static_cast<i64>(cb.n_scales)}, kF32);
    if (!s.weights.symmetric) f.add({static_cast<i64>(cb.n_scales)}, 4);
    if (s.activations && !s.activations->dynamic) {
      f.add({1}, kF32);
      if (!s.activations->symmetric) f.add({1}, 4);
    }
  }
  return f;
}

// --- export ---------------------------------------------------------------------------------

struct ExportTensor {
  std::string name;
  DType dtype;
  Shape shape;
  int layer = -1;
  bool view = false;   // the source's own tensor, passed through without a copy
  bool codes = false;  // the block's integer weights, shared with it (no copy)
  u64 convert_temp = 0;
  u64 source_pages = 0;  // outside the blocks: the source tensor's stored bytes
  bool mapped = false;   // those pages are mapped already when the export starts
  u64 bytes() const { return u(shape_numel(shape)) * dtype_size(dtype); }
};

bool exports_codes(const io::Scheme& s) { return s.activations.has_value(); }

// stages/export.cpp: the tensors written, in model_tensors order.
std::vector<ExportTensor> export_tensors(const io::ModelConfig& c, const ModelShape& m,
                                         const io::Scheme& s, DType out) {
  std::vector<ExportTensor> list;
  const bool int_quantized = exports_codes(s);
  const bool static_input = s.activations && !s.activations->dynamic;
  const bool per_channel = s.weights.granularity == io::WeightGranularity::channel;
  for (const auto& t : m.specs) {
    if (t.layer < 0) {
      // Passed through when the dtype already matches; f16 <-> bf16 converts through f32.
      ExportTensor e{t.name, out, t.shape, -1, c.torch_dtype == out};
      if (!e.view && c.torch_dtype != DType::f32 && out != DType::f32)
        e.convert_temp = u(shape_numel(t.shape)) * kF32;
      e.source_pages = u(shape_numel(t.shape)) * dtype_size(c.torch_dtype);
      list.push_back(e);
      continue;
    }
    if (t.kind != TensorKind::linear_weight) {
      list.push_back({t.name, out, t.shape, t.layer});
      continue;
    }
    const std::string module = t.name.substr(0, t.name.size() - std::string(".weight").size());
    if (int_quantized) {
      list.push_back({t.name, DType::i8, t.shape, t.layer, false, true});
    } else {
      list.push_back({module + ".weight_packed",
                      DType::i32,
                      {t.shape[0], cpu::packed_words(t.shape[1], 8)},
                      t.layer});
      list.push_back({module + ".weight_shape", DType::i64, {2}, t.layer});
    }
    list.push_back(
        {module + ".weight_scale", out, per_channel ? Shape{t.shape[0], 1} : Shape{1}, t.layer});
    if (static_input) list.push_back({module + ".input_scale", out, {1}, t.layer});
  }
  return list;
}

// io/safetensors.cpp write_safetensors: u64 length, the JSON header padded to 8 bytes.
u64 safetensors_header_bytes(const std::vector<const ExportTensor*>& shard) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = std::map<std::string, std::string>{{"format", "pt"}};
  u64 offset = 0;
  for (const ExportTensor* t : shard) {
    const u64 bytes = t->bytes();
    header[t->name] = {{"dtype", std::string(safetensors_dtype_name(t->dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  const u64 text = header.dump().size();
  return 8 + text + (8 - text % 8) % 8;
}

nlohmann::json quantization_args(int bits, bool symmetric, std::string_view strategy,
                                 bool dynamic) {
  return nlohmann::json{{"num_bits", bits},       {"type", "int"},
                        {"symmetric", symmetric}, {"strategy", std::string(strategy)},
                        {"group_size", nullptr},  {"dynamic", dynamic}};
}

// stages/export.cpp writes config.json as io::to_hf_config plus this quantization_config.
u64 export_config_bytes(const io::ModelConfig& c, const io::Scheme& s, DType out) {
  io::ModelConfig oc = c;
  oc.torch_dtype = out;
  nlohmann::json hf = io::to_hf_config(oc);
  const std::string format = s.activations ? "int-quantized" : "pack-quantized";
  nlohmann::json group = nlohmann::json::object();
  group["targets"] = nlohmann::json::array({"Linear"});
  group["weights"] = quantization_args(
      s.weights.bits, s.weights.symmetric,
      s.weights.granularity == io::WeightGranularity::channel ? "channel" : "tensor", false);
  if (s.activations)
    group["input_activations"] = quantization_args(
        s.activations->bits, s.activations->symmetric,
        s.activations->granularity == io::ActivationGranularity::token ? "token" : "tensor",
        s.activations->dynamic);
  else
    group["input_activations"] = nullptr;
  group["format"] = format;
  std::vector<std::string> ignore = {"lm_head"};
  if (c.has_projections()) {
    const auto names = model::TensorNames::canonical(c);
    for (const auto& n : {names.project_in(), names.project_out()})
      ignore.push_back(n.substr(0, n.size() - std::string(".weight").size()));
  }
  nlohmann::json q = nlohmann::json::object();
  q["quant_method"] = "compressed-tensors";
  q["format"] = format;
  q["quantization_status"] = "compressed";
  q["ignore"] = ignore;
  q["kv_cache_scheme"] = nullptr;
  q["global_compression_ratio"] = nullptr;
  q["config_groups"] = nlohmann::json{{"group_0", group}};
  hf["quantization_config"] = q;
  return hf.dump(2).size() + 1;
}

struct ExportSim {
  ExportDiskPlan disk;
  // The export's peak and what it is made of: mapped checkpoint pages, the block being rebuilt
  // (or held), the shard's tensors waiting to be written.
  u64 peak = 0, peak_mapped = 0, peak_block = 0, peak_shard = 0;
  u64 mapped_final = 0;  // mapped pages once the export is written
};

struct ExportInput {
  u64 max_shard = 0;
  // Per layer: while its block is rebuilt, once built, the checkpoint pages its load leaves
  // mapped, and whether those are mapped already (rank 0's own blocks).
  std::vector<u64> block_peak, block_final, block_pages;
  std::vector<bool> block_mapped;
  u64 mapped = 0;  // pages mapped when the export starts
};

// io/checkpoint.cpp ShardedCheckpointWriter (a shard is written once the next tensor would take
// it past max_shard_bytes) fed by the streaming exporter (stages/export.h): one block rebuilt at
// a time; converted tensors stay in memory until their shard is written, and so do integer
// weights, which keep their block's codes alive after the block is released. Source tensors
// passed through are read (their pages mapped) when their shard is written; converted ones when
// they are converted.
ExportSim simulate_export(const std::vector<ExportTensor>& list, const ExportInput& in) {
  ExportSim sim;
  std::vector<std::vector<const ExportTensor*>> shards(1);
  u64 pending = 0;       // bytes in the current shard (what decides the flush)
  u64 pending_held = 0;  // of them, memory only the shard holds (conversions, released codes)
  u64 block_live = 0;    // the current block
  u64 block_shared = 0;  // its codes that are also in the current shard
  u64 mapped = in.mapped;
  int layer = -1;
  auto see = [&](u64 block_extra, u64 shard_extra) {
    const u64 total = mapped + pending_held + shard_extra + block_live + block_extra;
    if (total <= sim.peak) return;
    sim.peak = total;
    sim.peak_mapped = mapped;
    sim.peak_block = block_live + block_extra;
    sim.peak_shard = pending_held + shard_extra;
  };
  auto write_shard = [&] {  // the pass-through tensors are read now
    for (const ExportTensor* t : shards.back())
      if (t->view && !t->mapped) mapped += t->source_pages;
    see(0, 0);
  };
  for (const auto& t : list) {
    if (t.layer != layer) {
      pending_held += block_shared;  // the previous block is released, its codes stay queued
      block_live = block_shared = 0;
      layer = t.layer;
      if (layer >= 0) {
        const auto l = static_cast<std::size_t>(layer);
        if (!in.block_mapped[l]) mapped += in.block_pages[l];
        see(in.block_peak[l], 0);
        block_live = in.block_final[l];
      }
    }
    const u64 bytes = t.bytes();
    if (!shards.back().empty() && pending + bytes > in.max_shard) {
      write_shard();
      shards.emplace_back();
      pending = pending_held = block_shared = 0;
    }
    if (t.layer < 0 && !t.view && !t.mapped) mapped += t.source_pages;  // read to convert
    if (!t.view && !t.codes) see(0, bytes + t.convert_temp);
    shards.back().push_back(&t);
    pending += bytes;
    if (t.codes)
      block_shared += bytes;
    else if (!t.view)
      pending_held += bytes;
    sim.disk.tensor_bytes += bytes;
  }
  pending_held += block_shared;
  block_live = block_shared = 0;
  write_shard();
  sim.mapped_final = mapped;
  sim.disk.shards = static_cast<int>(shards.size());
  nlohmann::json weight_map = nlohmann::json::object();
  for (std::size_t i = 0; i < shards.size(); ++i) {
    sim.disk.header_bytes += safetensors_header_bytes(shards[i]);
    const std::string file =
        fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    for (const ExportTensor* t : shards[i]) weight_map[t->name] = file;
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", sim.disk.tensor_bytes}}},
                                  {"weight_map", weight_map}};
    sim.disk.index_bytes = index.dump(2).size() + 1;
  }
  return sim;
}

}  // namespace

// --- public ---------------------------------------------------------------------------------

std::string_view phase_name(Phase phase) {
  switch (phase) {
    case Phase::load_embedding:
      return "load_embedding";
    case Phase::embed:
      return "embed";
    case Phase::receive:
      return "receive";
    case Phase::calibrate:
      return "calibrate";
    case Phase::transform:
      return "transform";
    case Phase::quantize:
      return "quantize";
    case Phase::checkpoint:
      return "checkpoint";
    case Phase::propagate:
      return "propagate";
    case Phase::export_model:
      return "export";
    case Phase::evaluate_blocks:
      return "evaluate_blocks";
    case Phase::evaluate_head:
      return "evaluate_head";
  }
  return "?";
}

bool is_evaluation(Phase phase) {
  return phase == Phase::evaluate_blocks || phase == Phase::evaluate_head;
}

const MemoryTerm* RankPlan::term(std::string_view name) const {
  for (const auto& t : terms)
    if (t.name == name) return &t;
  return nullptr;
}

std::uint64_t RankPlan::mapped_host(Phase phase) const {
  u64 n = 0;
  for (const auto& t : terms)
    if (t.mapped && t.memory == Memory::host && t.live_in(phase)) n += t.bytes;
  return n;
}

bool RunPlan::fits() const {
  for (const auto& r : ranks)
    if (!r.fits()) return false;
  return true;
}

std::vector<std::string> RunPlan::refusals() const {
  std::vector<std::string> out;
  for (const auto& r : ranks)
    if (!r.fits()) out.push_back(r.refusal);
  return out;
}

std::optional<TokenShape> probe_token_file(const std::string& path, std::optional<i64> seq_len,
                                           std::optional<i64> cap, const io::ModelConfig& c,
                                           std::string& why) {
  try {
    const auto data = io::read_tokens(path);
    TokenShape t;
    t.seq_len = seq_len.value_or(data.seq_len > 0 ? data.seq_len
                                                  : std::min<i64>(2048, c.max_position_embeddings));
    t.sequences = static_cast<i64>(data.tokens.size()) / t.seq_len;
    if (cap) t.sequences = std::min(t.sequences, *cap);
    if (t.sequences == 0) {
      why = fmt::format("{}: {} tokens are fewer than one sequence of {}", path, data.tokens.size(),
                        t.seq_len);
      return std::nullopt;
    }
    return t;
  } catch (const Error& e) {
    why = e.what();
    return std::nullopt;
  }
}

std::string plan_config_file(const io::Recipe& recipe, const std::string& config_flag) {
  if (!config_flag.empty()) return config_flag;
  const std::string file = (fs::path(recipe.model_dir) / "config.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(file, ec))
    fail(ErrorContext{.file = file},
         "does not exist (the model directory of {}): --config CONFIG_JSON is required to plan "
         "without the model, e.g. --config configs/models/llama-2-70b.json",
         recipe.file);
  return file;
}

std::uint64_t export_copied_bytes(const std::string& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) return 0;
  u64 total = 0;
  for (const auto& entry : fs::directory_iterator(model_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file(ec) || name.starts_with(".") || name == "config.json") continue;
    bool weights = false;  // stages/export.cpp is_weights_or_config
    for (std::string_view suffix :
         {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth",
          ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"})
      weights |= name.ends_with(suffix);
    if (!weights) total += static_cast<u64>(entry.file_size(ec));
  }
  return total;
}

std::uint64_t parse_bytes(std::string_view text) {
  std::string s(text);
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(s, &used);
  } catch (const std::exception&) {
    fail("'{}' is not a size: expected a number with an optional unit (B, K/M/G/T, KiB.., KB..)",
         s);
  }
  std::string unit = s.substr(used);
  unit.erase(0, unit.find_first_not_of(' '));
  std::string up = unit;
  for (auto& ch : up) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  double scale = 0;
  const std::pair<const char*, double> units[] = {
      {"", 1},       {"B", 1},        {"K", 0x1p10},   {"KIB", 0x1p10}, {"KB", 1e3},
      {"M", 0x1p20}, {"MIB", 0x1p20}, {"MB", 1e6},     {"G", 0x1p30},   {"GIB", 0x1p30},
      {"GB", 1e9},   {"T", 0x1p40},   {"TIB", 0x1p40}, {"TB", 1e12}};
  for (const auto& [name, f] : units)
    if (up == name) scale = f;
  if (scale == 0 || !(value >= 0) || !std::isfinite(value))
    fail("'{}' is not a size: expected a number with an optional unit (B, K/M/G/T, KiB.., KB..)",
         s);
  const double bytes = value * scale;
  if (bytes >= 1.8e19) fail("'{}' is too large", s);
  return static_cast<u64>(std::llround(bytes));
}

RunPlan plan_run(const io::ModelConfig& c, const io::Recipe& recipe, const PlanOptions& o) {
  if (o.ranks < 1) fail("cannot plan for {} ranks", o.ranks);
  if (o.ranks_per_node < 1) fail("cannot plan with {} ranks per node", o.ranks_per_node);
  const ModelShape m = model_shape(c);  // refuses architectures without a forward (BLOOM)
  const int replicas = o.replicas.value_or(Partition::default_replicas(int(c.num_layers), o.ranks));
  RunPlan plan{.partition = Partition::for_model(c, o.ranks, replicas)};
  const Partition& p = plan.partition;
  plan.ranks_per_node = o.ranks_per_node;
  plan.host_memory_per_rank = o.host_memory_per_rank;
  plan.device_memory_per_gpu = o.device_memory_per_gpu;
  plan.weights_dtype = c.torch_dtype;
  plan.export_dtype = recipe.export_.dtype.value_or(c.torch_dtype);
  plan.exporting = recipe.export_.format == io::ExportFormat::compressed_tensors;
  if (plan.exporting && !(plan.export_dtype == DType::f32 || plan.export_dtype == DType::f16 ||
                          plan.export_dtype == DType::bf16))
    fail(ErrorContext{.file = recipe.file, .key = "export.dtype"},
         "scales and unquantized tensors are stored as float32, float16 or bfloat16");

  // Calibration geometry, as the runner cuts the token file.
  if (o.calibration) {
    plan.calibration = *o.calibration;
  } else {
    const std::string unread =
        o.calibration_unreadable.empty()
            ? fmt::format("the calibration token file {} was not read", recipe.data.calibration)
            : fmt::format("the calibration token file cannot be read ({})",
                          o.calibration_unreadable);
    for (const auto& [key, value] :
         {std::pair{"data.seq_len", recipe.data.seq_len},
          std::pair{"data.calibration_sequences", recipe.data.calibration_sequences}})
      if (!value)
        fail(ErrorContext{.file = recipe.file, .key = key},
             "not set, and {}: set {} to plan without the calibration tokens", unread, key);
    plan.calibration = {*recipe.data.calibration_sequences, *recipe.data.seq_len};
    plan.notes.push_back(fmt::format(
        "calibration: {} x {} tokens from the recipe (data.calibration_sequences, data.seq_len); "
        "the token file was not read{}",
        plan.calibration.sequences, plan.calibration.seq_len,
        o.calibration_unreadable.empty() ? "" : " (" + o.calibration_unreadable + ")"));
  }
  const i64 n_cal = plan.calibration.sequences, S = plan.calibration.seq_len;
  if (S > c.max_position_embeddings)
    fail(ErrorContext{.file = recipe.file, .key = "data.seq_len"},
         "sequence length {} exceeds max_position_embeddings {}", S, c.max_position_embeddings);
  plan.micro_batch = recipe.data.micro_batch;
  plan.micro_batches = (n_cal + plan.micro_batch - 1) / plan.micro_batch;
  if (plan.micro_batches < p.replicas())
    fail(ErrorContext{.file = recipe.file, .key = "data.micro_batch"},
         "{} calibration micro-batches of {} sequences cannot feed {} data-parallel replicas; use "
         "smaller micro-batches or fewer replicas",
         plan.micro_batches, plan.micro_batch, p.replicas());
  if (recipe.data.evaluation) {
    if (o.evaluation) {
      plan.evaluation = *o.evaluation;
    } else {
      plan.evaluation = TokenShape{n_cal, S};
      plan.notes.push_back(fmt::format(
          "evaluation: token file {} not read; sized as the calibration set ({} x {} tokens)",
          *recipe.data.evaluation, n_cal, S));
    }
  }

  const u64 H = u(c.hidden_size), V = u(c.vocab_size), P = u(c.word_embed_proj_dim);
  const u64 db = dtype_size(c.torch_dtype);
  const bool owned_fp32 = c.torch_dtype != DType::f32;  // else load_block views the mapping
  // Pages a load leaves mapped: converted tensors' are released, f32 ones are used in place.
  const bool keeps_pages = !(kLoadReleasesConvertedPages && owned_fp32);
  const bool quant_inputs = recipe.calibration.inputs == io::CalibrationInputs::quant;
  const bool has_os_plus = recipe.find_stage(io::StageKind::os_plus) != nullptr;
  bool transforms = false;
  for (const auto& s : recipe.stages)
    transforms |= s.kind == io::StageKind::smoothquant || s.kind == io::StageKind::os_plus;
  // device: cuda moves the block forward (calibration, propagation) to the GPU: its weights in
  // the GEMM type and the micro-batch activations live there (model/device_forward.cpp). The
  // stages (transforms, quantization), the calibration hidden states and the mapped checkpoint
  // stay on the host.
  plan.on_gpu = recipe.device == io::Device::cuda;
  const Memory work = Memory::host;
  const i64 T1 = std::min<i64>(plan.micro_batch, n_cal) * S;  // global micro-batch 0 (OS+)

  // A block through the recipe's stages. `kept`: the loaded FP32 block stays alive beside them
  // (its bytes are the block_fp32 term); `search`: OS+ searches (the writer) or only re-applies
  // the recorded transforms (a rebuild from the block's file).
  struct StagesSim {
    u64 transform_peak = 0, transformed = 0, quantize_peak = 0, codes = 0, quantized = 0;
  };
  auto stages_sim = [&](const BlockShape& b, bool kept, bool search) {
    StagesSim r;
    BlockSim sim(c, b, kept, owned_fp32);
    sim.reset_peak();
    for (const auto& st : recipe.stages) {
      const bool osp = st.kind == io::StageKind::os_plus;
      if (!osp && st.kind != io::StageKind::smoothquant) continue;
      for (bool attention : {true, false}) {
        if (osp && search) sim.see(os_plus_search_bytes(c, b, attention, T1, S));
        sim.apply(attention, osp);
      }
    }
    r.transform_peak = sim.peak();
    r.transformed = sim.live();
    sim.reset_peak();
    sim.quantize(recipe.scheme);
    r.quantize_peak = sim.peak();
    r.codes = sim.codes();
    r.quantized = sim.live() - sim.codes();
    return r;
  };

  // The export: disk from the shapes, memory from the streaming simulation on rank 0 (a stage 0
  // rank: its embedding and its own blocks were loaded before).
  const std::size_t L = m.blocks.size();
  std::vector<u64> rebuilt_peak(L), rebuilt_final(L), rebuilt_codes(L), block_pages(L);
  for (std::size_t i = 0; i < L; ++i) {
    const StagesSim r = stages_sim(m.blocks[i], /*kept=*/false, /*search=*/false);
    rebuilt_peak[i] = std::max(r.transform_peak, r.quantize_peak);
    rebuilt_final[i] = r.quantized + r.codes;
    rebuilt_codes[i] = r.codes;
    block_pages[i] = keeps_pages ? m.blocks[i].params * db : 0;
  }
  const BlockRange rank0_blocks = p.blocks_of(0);
  const u64 embedding_pages = keeps_pages ? m.embedding_stored * db : 0;
  auto export_list = export_tensors(c, m, recipe.scheme, plan.export_dtype);
  ExportSim export_sim;
  if (plan.exporting) {
    ExportInput in{.max_shard = o.max_shard_bytes,
                   .block_peak = rebuilt_peak,
                   .block_final = rebuilt_final,
                   .block_pages = block_pages,
                   .block_mapped = std::vector<bool>(L, false),
                   .mapped = embedding_pages};
    for (int blk = rank0_blocks.begin; blk < rank0_blocks.end; ++blk) {
      in.block_mapped[static_cast<std::size_t>(blk)] = true;
      in.mapped += block_pages[static_cast<std::size_t>(blk)];
    }
    for (auto& t : export_list)
      if (t.layer < 0)
        t.mapped = keeps_pages && (t.name.find("embed") != std::string::npos ||
                                   t.name.find("project_in") != std::string::npos);
    export_sim = simulate_export(export_list, in);
    plan.export_disk = export_sim.disk;
    plan.export_disk.config_bytes = export_config_bytes(c, recipe.scheme, plan.export_dtype);
    plan.export_disk.copied_bytes = o.export_copied_bytes;
  }

  const auto Lphases = {Phase::calibrate, Phase::transform, Phase::quantize, Phase::checkpoint,
                        Phase::propagate};
  for (int rank = 0; rank < p.world_size(); ++rank) {
    RankPlan r;
    r.rank = rank;
    r.stage = p.stage_of(rank);
    r.replica = p.replica_of(rank);
    r.blocks = p.blocks_of(rank);
    const auto [m0, m1] = p.samples_of_replica(r.replica, plan.micro_batches);
    r.first_sequence = m0 * plan.micro_batch;
    r.sequences = std::max<i64>(0, std::min(m1 * plan.micro_batch, n_cal) - r.first_sequence);
    r.micro_batches = m1 - m0;
    const bool writer = r.replica == 0;
    const bool exports = rank == 0 && plan.exporting;
    const bool evaluates = rank == 0 && plan.evaluation.has_value();
    const i64 n = r.sequences;
    const i64 T = std::min<i64>(plan.micro_batch, n) * S;  // tokens of its largest micro-batch

    // The phases this rank goes through. A replica other than 0 calibrates only; with quantized
    // inputs it then rebuilds the finished block from the writer's file (phase quantize).
    std::uint32_t entered = bits({Phase::calibrate});
    if (r.stage == 0 && n > 0) entered |= bits({Phase::load_embedding, Phase::embed});
    if (r.stage > 0 && n > 0) entered |= bits({Phase::receive});
    if (writer && transforms) entered |= bits({Phase::transform});
    if (writer || quant_inputs) entered |= bits({Phase::quantize});
    if (writer) entered |= bits({Phase::checkpoint});
    if (quant_inputs) entered |= bits({Phase::propagate});
    if (exports) entered |= bits({Phase::export_model});
    if (evaluates) entered |= bits({Phase::evaluate_blocks, Phase::evaluate_head});
    const std::uint32_t all = entered;
    const std::uint32_t block_loop = bits(Lphases) & entered;
    auto add = [&](std::string name, u64 bytes, std::uint32_t phases, std::string formula,
                   Memory where = Memory::host, bool mapped = false) {
      phases &= entered;
      if (phases == 0) return;
      r.terms.push_back({std::move(name), std::move(formula), bytes, where, phases, mapped});
    };

    // The largest of its blocks stands for every block (in LLaMA and OPT they are all alike);
    // the mapped pages of all of them add up.
    std::size_t big = static_cast<std::size_t>(r.blocks.begin);
    u64 pages = 0;
    for (int blk = r.blocks.begin; blk < r.blocks.end; ++blk) {
      pages += block_pages[static_cast<std::size_t>(blk)];
      if (m.blocks[static_cast<std::size_t>(blk)].params > m.blocks[big].params)
        big = static_cast<std::size_t>(blk);
    }
    const BlockShape& b = m.blocks[big];

    add("baseline", kProcessBaselineBytes, all,
        "process before any model data: binary, MPI, HDF5, OpenBLAS (measured)");
    add("calibration_tokens", u(n_cal) * u(S) * 4, all,
        fmt::format("every rank loads the token set: {} x {} ids x 4 B", n_cal, S));
    const u64 hidden = u(n) * u(S) * H * kF32;
    add("hidden_states", hidden, bits({Phase::embed, Phase::receive}) | block_loop,
        fmt::format("its replica's sequences: {} x {} tokens x {} hidden x 4 B", n, S, H));
    if (quant_inputs)
      add("hidden_states_quant", hidden, bits({Phase::calibrate}),
          "calibration.inputs = quant: calibration runs on a copy of the hidden states");
    if (r.stage == 0) {
      add("embedding_fp32", owned_fp32 ? m.embedding_params * kF32 : 0,
          bits({Phase::load_embedding, Phase::embed}),
          fmt::format("load_embedding: {} params x 4 B{}", m.embedding_params,
                      owned_fp32 ? "" : " (0: an f32 checkpoint is used in place)"));
      if (c.has_projections())
        add("embedding_words", u(n) * u(S) * P * kF32, bits({Phase::embed}),
            fmt::format("words before project_in: {} x {} x {} x 4 B", n, S, P));
      // Converted pages are released once the table is converted, before the tokens are
      // embedded; f32 pages stay mapped.
      add("mapped_embedding", m.embedding_stored * db,
          bits({Phase::load_embedding}) | (keeps_pages ? bits({Phase::embed}) | block_loop : 0),
          fmt::format("embedding pages of the checkpoint: {} params x {} B{}", m.embedding_stored,
                      db, keeps_pages ? ", mapped for the process's life" : ", while converted"),
          Memory::host, true);
    }
    if (r.stage > 0) {
      Hdf5File f;
      f.add({n * S, c.hidden_size}, kF32);
      add("receive_verify", f.largest_verify + kHdf5ChunkBytes, bits({Phase::receive}),
          "the received hidden states' checkpoint read back in pieces of <= 64 MiB");
    }
    if (keeps_pages)
      add("mapped_blocks", pages, block_loop,
          fmt::format("pages of its {} blocks, mapped for the process's life: {} B each of {} "
                      "params",
                      r.blocks.size(), db, b.params),
          Memory::host, true);
    // The writer hands the loaded block to its stages (kWriterKeepsLoadedBlock says whether it
    // keeps the original too); another replica keeps it until it rebuilds the finished block.
    const bool kept = writer ? kWriterKeepsLoadedBlock : true;
    const u64 fp32 = owned_fp32 ? b.params * kF32 : 0;
    const std::string fp32_formula =
        fmt::format("load_block as FP32: {} params x 4 B{}", b.params,
                    owned_fp32 ? "" : " (0: an f32 checkpoint is used in place)");
    if (kept)
      add("block_fp32", fp32, writer ? block_loop : bits({Phase::calibrate, Phase::quantize}),
          fp32_formula + ", kept for the whole block", work);
    else
      add("block_fp32", fp32, bits({Phase::calibrate}), fp32_formula, work);
    const u64 qd = u(b.at(LinearRole::q).rows), kvd = u(b.at(LinearRole::k).rows),
              F = u(b.at(LinearRole::up).rows);
    const u64 stats_bytes = (2 * H + 2 * qd + F + 2 * kvd) * 3 * kF32;  // 7 sites x 3 vectors
    add("block_stats", stats_bytes, block_loop, "absmax/min/max per channel of the 7 sites x 4 B");
    const auto forward_phases = bits({Phase::calibrate, Phase::propagate});
    if (!plan.on_gpu) {
      add("micro_batch_copy", u(T) * H * kF32, forward_phases,
          fmt::format("the micro-batch's hidden states: {} tokens x {} x 4 B", T, H), work);
      add("block_activations", block_activation_bytes(c, b, T, S), forward_phases,
          activation_formula(c, b, T, S), work);
    } else {
      // model/device_forward.cpp: the buffers of DeviceBlockForward::Impl. They grow to the
      // largest micro-batch and stay; the fp32 staging of one weight lives while a block uploads.
      const bool f32_gemm = c.torch_dtype == DType::f32;
      const u64 gemm_bytes = f32_gemm ? kF32 : 2;
      const u64 linears = b.linear_weights();
      // The quantized propagation runs fp32 GEMMs (dequantized weights need more than 16 bits).
      add("device_block_weights", linears * gemm_bytes + (b.params - linears) * kF32,
          quant_inputs ? bits({Phase::calibrate}) : forward_phases,
          fmt::format("{} linear weights x {} B (the GEMM type), norms and biases x 4 B", linears,
                      gemm_bytes),
          Memory::device);
      if (quant_inputs)
        add("device_block_weights_fp32", b.params * kF32, bits({Phase::propagate}),
            fmt::format("the quantized block for fp32 GEMMs: {} params x 4 B", b.params),
            Memory::device);
      u64 largest = 0;
      for (const auto& l : b.linear) largest = std::max(largest, l.weights());
      if (!f32_gemm)
        add("device_weight_staging", largest * kF32, forward_phases,
            fmt::format("the largest linear ({} weights) as fp32 on its way to 16 bits", largest),
            Memory::device);
      const u64 gated = c.gated_mlp() ? 3 : 1;
      const u64 widest = std::max({H, qd, F});
      add("device_activations",
          u(T) * ((3 * H + 2 * qd + 2 * kvd + gated * F) * kF32 + (f32_gemm ? 0 : widest * 2) + 8),
          forward_phases,
          fmt::format(
              "{} tokens x (3 hidden {} + 2 q {} + 2 kv {} + {} x ffn {}) x 4 B{}, positions", T, H,
              qd, kvd, gated, F,
              f32_gemm ? "" : fmt::format(" + the 16-bit GEMM input, {} x 2 B", widest)),
          Memory::device);
      add("device_stats", stats_bytes, bits({Phase::calibrate}),
          "absmax/min/max per channel of the 7 sites x 4 B, on the device for the pass",
          Memory::device);
      add("cublaslt_workspace", u64{32} << 20, forward_phases, "cuBLASLt workspace, 32 MiB",
          Memory::device);
      add("cuda_context", kCudaContextBytes, forward_phases,
          "CUDA context and loaded kernels (an estimate)", Memory::device);
      // The OS+ capture (a host hook) sees micro-batch 0 through a host copy of one site at a
      // time, the widest last.
      if (has_os_plus && writer)
        add("hook_copy", u(T1) * widest * kF32, bits({Phase::calibrate}),
            fmt::format("OS+ capture of micro-batch 0 through a host copy: {} x {} x 4 B", T1,
                        widest));
    }
    if (has_os_plus && writer)
      add("os_plus_inputs", 2 * u(T1) * H * kF32, bits({Phase::calibrate, Phase::transform}),
          fmt::format("OS+ search inputs (qkv_in, mlp_in) of micro-batch 0: 2 x {} x {} x 4 B", T1,
                      H),
          work);
    // The writer's stages, or another replica's rebuild (which has no transform phase of its
    // own: its transient is part of the quantize phase).
    // A replica's rebuild keeps the originals alive too: its old state holds them until the
    // rebuilt one replaces it.
    StagesSim st = stages_sim(b, kept, writer);
    if (!writer) st.quantize_peak = std::max(st.quantize_peak, st.transform_peak);
    const std::string whose = kept ? " beyond the loaded block" : "";
    if (writer && transforms) {
      add("transformed_weights", st.transformed, bits({Phase::transform}),
          "the block's FP32 tensors after the transforms (new q/k/v, gate/up (fc1), norms)" + whose,
          work);
      add("transform_transient", st.transform_peak - st.transformed, bits({Phase::transform}),
          has_os_plus ? "OS+ search candidates and outputs, or a consumer being folded"
                      : "a consumer being folded (vector and tensor) beside the new ones before it",
          work);
    }
    add("quantized_codes", st.codes, bits({Phase::quantize, Phase::checkpoint, Phase::propagate}),
        fmt::format("int8 codes of {} weights + scales", b.linear_weights()), work);
    add("dequantized_weights", st.quantized,
        bits({Phase::quantize, Phase::checkpoint, Phase::propagate}),
        "the block's FP32 tensors once quantized (linears dequantized)" + whose, work);
    add("quantize_transient", st.quantize_peak - st.codes - st.quantized, bits({Phase::quantize}),
        writer ? "a linear's new dequantized weight beside the weights not yet replaced"
               : "rebuilding the block from the writer's file: transforms re-applied, weights "
                 "dequantized",
        work);
    const Hdf5File bf = block_file(c, b, recipe);
    add("checkpoint_verify", bf.largest_verify + kHdf5ChunkBytes, bits({Phase::checkpoint}),
        "commit() reads the largest dataset back in pieces of <= 64 MiB, plus a chunk");

    if (exports) {
      add("export_mapped", export_sim.peak_mapped, bits({Phase::export_model}),
          "checkpoint pages mapped at the export's peak: the embedding, the blocks the loader "
          "read, the head once written",
          Memory::host, true);
      add("export_block", export_sim.peak_block, bits({Phase::export_model}),
          "the block rebuilt from its checkpoint: FP32 weights, codes, a consumer being folded");
      add("export_shard", export_sim.peak_shard, bits({Phase::export_model}),
          fmt::format("tensors of the shard being written (shards of at most {})",
                      bytes_str(o.max_shard_bytes)));
    }
    if (evaluates) {
      const TokenShape e = *plan.evaluation;
      const i64 Te = e.sequences * e.seq_len;
      const auto eval = bits({Phase::evaluate_blocks, Phase::evaluate_head});
      u64 mapped = plan.exporting ? export_sim.mapped_final : 0;
      if (!plan.exporting)
        for (std::size_t i = 0; i < L; ++i) mapped += block_pages[i];
      if (!plan.exporting && keeps_pages) mapped += (m.embedding_stored + m.head_stored) * db;
      add("eval_mapped", mapped, eval, "checkpoint pages mapped by the export and the FP model",
          Memory::host, true);
      u64 quantized = 0;
      for (std::size_t i = 0; i < L; ++i)
        quantized += rebuilt_final[i] - (plan.exporting ? rebuilt_codes[i] : 0);
      quantized += (m.embedding_params + m.head_params) * kF32;
      add("eval_quantized_model", quantized, eval,
          "every block dequantized in FP32 (with its codes when nothing was exported), embedding "
          "and head in FP32");
      if (plan.exporting)
        add("eval_export_pages", plan.export_disk.tensor_bytes, eval,
            "the export's pages, mapped: its integer weights are used in place", Memory::host,
            true);
      add("eval_tokens", u(Te) * 4, eval, fmt::format("{} x {} ids x 4 B", e.sequences, e.seq_len));
      add("eval_hidden", 2 * u(Te) * H * kF32, eval,
          fmt::format("hidden states of both models: 2 x {} tokens x {} x 4 B", Te, H));
      add("eval_fp_block", owned_fp32 ? std::max(b.params, m.embedding_params) * kF32 : 0,
          bits({Phase::evaluate_blocks}), "the FP model's block (or embedding) as FP32");
      add("eval_activations", block_activation_bytes(c, b, Te, e.seq_len),
          bits({Phase::evaluate_blocks}),
          "all evaluation tokens at once: " + activation_formula(c, b, Te, e.seq_len));
      add("eval_logits",
          u(Te) * V * kF32 + 2 * u(e.seq_len) * V * kF32 + u(e.seq_len) * H * kF32 + u(Te) * 16,
          bits({Phase::evaluate_head}),
          fmt::format("the reference's logits of every sequence ({} x {} x 4 B) and one sequence "
                      "of each model",
                      Te, V));
      add("eval_fp_head", owned_fp32 ? m.head_params * kF32 : 0, bits({Phase::evaluate_head}),
          "the FP model's head as FP32");
    }

    // Peaks.
    for (int ph = 0; ph < kPhaseCount; ++ph) {
      if (!((entered >> ph) & 1u)) continue;
      for (const auto& t : r.terms) {
        if (!t.live_in(static_cast<Phase>(ph))) continue;
        (t.memory == Memory::host ? r.host_by_phase : r.device_by_phase)[ph] += t.bytes;
      }
      const auto phase = static_cast<Phase>(ph);
      if (r.host_by_phase[ph] > r.peak_host) {
        r.peak_host = r.host_by_phase[ph];
        r.peak_phase = phase;
      }
      r.peak_device = std::max(r.peak_device, r.device_by_phase[ph]);
      if (is_evaluation(phase)) {
        r.evaluation_peak_host = std::max(r.evaluation_peak_host, r.host_by_phase[ph]);
      } else if (r.host_by_phase[ph] > r.run_peak_host) {
        r.run_peak_host = r.host_by_phase[ph];
        r.run_peak_phase = phase;
      }
    }

    // Disk: the block files (the stage's replica 0 writes them), the hidden states a stage > 0
    // rank receives (checkpointed so that a resume can start there).
    if (writer)
      for (int blk = r.blocks.begin; blk < r.blocks.end; ++blk)
        r.block_checkpoint_disk +=
            block_file(c, m.blocks[static_cast<std::size_t>(blk)], recipe).bytes();
    if (r.stage > 0 && n > 0) {
      Hdf5File f;
      f.add({n * S, c.hidden_size}, kF32);
      r.hidden_checkpoint_disk = f.bytes();
    }
    plan.block_checkpoint_disk += r.block_checkpoint_disk;
    plan.hidden_checkpoint_disk += r.hidden_checkpoint_disk;

    // Refusal: one line naming the rank, what it needs and what it has.
    std::vector<std::string> needs;
    const u64 have = o.host_memory_per_rank;
    if (have > 0 && r.run_peak_host > have) {
      const u64 mapped = r.mapped_host(r.run_peak_phase);
      needs.push_back(fmt::format(
          "{} of host memory at its peak ({}{})", bytes_str(r.run_peak_host),
          phase_name(r.run_peak_phase),
          mapped > 0 ? fmt::format("; {} of it mapped checkpoint pages", bytes_str(mapped)) : ""));
    }
    if (have > 0 && r.evaluation_peak_host > have)
      needs.push_back(fmt::format(
          "{} of host memory for the evaluation (recipe key data.evaluation: every block "
          "dequantized in FP32 plus the FP model; remove the key and evaluate the export with "
          "`shardquant eval` on a larger node)",
          bytes_str(r.evaluation_peak_host)));
    // Like host memory: checked when given (--device-memory), else only reported.
    if (plan.on_gpu && r.peak_device > 0 && o.device_memory_per_gpu) {
      if (r.peak_device > *o.device_memory_per_gpu)
        needs.push_back(fmt::format("{} of device memory, has {} per GPU", bytes_str(r.peak_device),
                                    bytes_str(*o.device_memory_per_gpu)));
    }
    if (!needs.empty()) {
      std::string line = fmt::format("rank {} (stage {}, replica {}) does not fit: needs {}", rank,
                                     r.stage, r.replica, needs[0]);
      for (std::size_t i = 1; i < needs.size(); ++i) line += "; and " + needs[i];
      if (have > 0 && r.peak_host > have)
        line += fmt::format("; has {} of host memory per rank", bytes_str(have));
      r.refusal = std::move(line);
    }
    plan.ranks.push_back(std::move(r));
  }
  return plan;
}

nlohmann::json plan_json(const RunPlan& plan) {
  using nlohmann::json;
  const Partition& p = plan.partition;
  json j;
  j["ranks"] = p.world_size();
  j["stages"] = p.stages();
  j["replicas"] = p.replicas();
  j["ranks_per_node"] = plan.ranks_per_node;
  j["host_memory_per_rank"] = plan.host_memory_per_rank;
  j["device_memory_per_gpu"] =
      plan.device_memory_per_gpu ? json(*plan.device_memory_per_gpu) : json(nullptr);
  j["device"] = plan.on_gpu ? "gpu" : "cpu";
  j["weights_dtype"] = std::string(dtype_name(plan.weights_dtype));
  j["export_dtype"] = std::string(dtype_name(plan.export_dtype));
  j["calibration"] = {{"sequences", plan.calibration.sequences},
                      {"seq_len", plan.calibration.seq_len},
                      {"micro_batch", plan.micro_batch},
                      {"micro_batches", plan.micro_batches}};
  j["evaluation"] = plan.evaluation ? json{{"sequences", plan.evaluation->sequences},
                                           {"seq_len", plan.evaluation->seq_len}}
                                    : json(nullptr);
  j["fits"] = plan.fits();
  j["notes"] = plan.notes;
  j["disk"] = {{"checkpoint", plan.checkpoint_disk()},
               {"checkpoint_blocks", plan.block_checkpoint_disk},
               {"checkpoint_hidden", plan.hidden_checkpoint_disk},
               {"export", plan.export_disk.total()},
               {"export_tensors", plan.export_disk.tensor_bytes},
               {"export_headers", plan.export_disk.header_bytes},
               {"export_index", plan.export_disk.index_bytes},
               {"export_config", plan.export_disk.config_bytes},
               {"export_copied", plan.export_disk.copied_bytes},
               {"export_shards", plan.export_disk.shards}};
  json ranks = json::array();
  for (const auto& r : plan.ranks) {
    json phases = json::object();
    for (int ph = 0; ph < kPhaseCount; ++ph)
      if (r.host_by_phase[ph] > 0 || r.device_by_phase[ph] > 0)
        phases[std::string(phase_name(static_cast<Phase>(ph)))] = {
            {"host", r.host_by_phase[ph]}, {"device", r.device_by_phase[ph]}};
    json terms = json::array();
    for (const auto& t : r.terms) {
      json live = json::array();
      for (int ph = 0; ph < kPhaseCount; ++ph)
        if (t.live_in(static_cast<Phase>(ph)))
          live.push_back(std::string(phase_name(static_cast<Phase>(ph))));
      terms.push_back({{"name", t.name},
                       {"bytes", t.bytes},
                       {"memory", t.memory == Memory::host ? "host" : "device"},
                       {"mapped", t.mapped},
                       {"phases", live},
                       {"formula", t.formula}});
    }
    ranks.push_back({{"rank", r.rank},
                     {"stage", r.stage},
                     {"replica", r.replica},
                     {"blocks", {r.blocks.begin, r.blocks.end}},
                     {"sequences", r.sequences},
                     {"first_sequence", r.first_sequence},
                     {"micro_batches", r.micro_batches},
                     {"peak_host", r.peak_host},
                     {"peak_phase", std::string(phase_name(r.peak_phase))},
                     {"run_peak_host", r.run_peak_host},
                     {"evaluation_peak_host", r.evaluation_peak_host},
                     {"peak_device", r.peak_device},
                     {"checkpoint_disk", r.checkpoint_disk()},
                     {"fits", r.fits()},
                     {"refusal", r.refusal},
                     {"phases", phases},
                     {"terms", terms}});
  }
  j["rank_plans"] = ranks;
  return j;
}

}  // namespace sq::pipeline
