// A run recipe: the YAML file `shardquant run RECIPE.yaml` reads (model, data, quantization
// scheme, ordered stages, export). Parsing is strict: an unknown key, a duplicate key, a value of
// the wrong type or out of range is refused with one line naming the file, the 1-based line and
// the key path, e.g. "configs/x.yaml:12: key 'scheme.weights.bits': must be an integer in [2, 8],
// got 9". Nothing in a recipe is ever silently ignored.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "io/model_config.h"

namespace sq::io {

enum class WeightGranularity { channel, tensor, group };
enum class WeightClip { minmax, mse };
enum class ActivationGranularity { token, tensor };
// How a symmetric b-bit scale is derived from absmax: max_int = absmax / (2^(b-1) - 1), as
// SmoothQuant (absmax/127); half_range = absmax / ((2^b - 1) / 2), as compressed-tensors'
// observers and transformers' emulation (absmax/127.5).
enum class ScaleRule { max_int, half_range };
// What each block is calibrated on: full-precision inputs (blocks independent, all ranks at once)
// or the outputs of the already-quantized previous blocks (sequential across ranks).
enum class CalibrationInputs { fp, quant };
enum class StageKind { calibrate, smoothquant, os_plus, quantize_weights };
enum class ExportFormat { compressed_tensors, none };
// Where a rank runs the block forward of calibration and propagation: the FP32 CPU kernels, or
// its GPU (one rank per GPU; linears in the checkpoint's 16-bit type, see model/device_forward.h).
enum class Device { cpu, cuda };

// Paths are absolute, or joined to the recipe file's directory, and lexically normalized.
struct DataSpec {
  std::string calibration;                            // token file (see io/token_file.h)
  std::optional<std::string> evaluation;              // token file; absent: no evaluation
  std::optional<std::int64_t> seq_len;                // absent: taken from a 2-D .npy
  std::optional<std::int64_t> calibration_sequences;  // cap; absent: every sequence
  std::int64_t micro_batch = 4;                       // sequences per micro-batch
};

struct WeightScheme {
  int bits = 8;  // 2..8
  bool symmetric = true;
  WeightGranularity granularity = WeightGranularity::channel;
  std::int64_t group_size = 0;  // > 0 iff granularity == group
  WeightClip clip = WeightClip::minmax;
};

struct ActivationScheme {
  int bits = 8;  // 2..8
  bool symmetric = true;
  ActivationGranularity granularity = ActivationGranularity::token;
  bool dynamic = true;                           // always true for token granularity
  ScaleRule scale_rule = ScaleRule::half_range;  // only set explicitly when symmetric
};

struct Scheme {
  WeightScheme weights;
  std::optional<ActivationScheme> activations;  // absent: weight-only quantization
  bool attention_inputs = false;  // also fake-quantize the q/k/v matmul inputs (needs activations)
};

struct CalibrationSpec {
  CalibrationInputs inputs = CalibrationInputs::fp;
};

struct StageSpec {
  StageKind kind = StageKind::calibrate;
  std::optional<double> alpha;  // smoothquant, in [0, 1]; absent: default_smoothquant_alpha
  int grid = 100;               // os_plus: at least this many thresholds are searched (>= 10)
  std::optional<double> floor;  // os_plus: lowest threshold, > 0; absent: default_os_plus_floor
};

struct ExportSpec {
  ExportFormat format = ExportFormat::compressed_tensors;
  // dtype of exported scales and of the tensors left unquantized; absent: the model's own.
  std::optional<DType> dtype;
};

struct Recipe {
  std::string file;                   // the recipe's path as given (for messages)
  std::string model_dir, output_dir;  // export goes to <output_dir>/export
  DataSpec data;
  Scheme scheme;
  CalibrationSpec calibration;
  // In run order. Always starts with calibrate (inserted when the file omits it) and ends with
  // quantize_weights; smoothquant and os_plus appear at most once each.
  std::vector<StageSpec> stages;
  ExportSpec export_;
  Device device = Device::cpu;
  int threads = 0;  // BLAS threads per rank; 0: 1 under MPI, the library's default otherwise

  // A canonical JSON string (sorted keys, resolved paths) of everything that changes the
  // checkpoints or the export; hashed to check that --resume continues the same run. Leaves out
  // output_dir, data.evaluation and threads, which change neither.
  std::string canonical() const;
  // The stage of this kind, or nullptr when the recipe has none.
  const StageSpec* find_stage(StageKind kind) const;
};

// Reads and parses the file; relative paths in it are resolved against its directory.
Recipe load_recipe(const std::string& path);
// `file_for_errors` names the recipe in messages (and becomes Recipe::file); relative paths are
// joined to `base_dir` (kept relative when `base_dir` is relative or empty).
Recipe parse_recipe(const std::string& yaml_text, const std::string& file_for_errors,
                    const std::string& base_dir);

// Per-family defaults for parameters a recipe may leave to run time (SmoothQuant's published α:
// LLaMA-2/3 0.85, OPT and BLOOM 0.5; OS+'s threshold floor: LLaMA 0.1, OPT 1.0).
double default_smoothquant_alpha(Arch arch);
double default_os_plus_floor(Arch arch);

// The spelling each value has in a recipe ("channel", "half_range", "os_plus"...).
std::string_view recipe_name(WeightGranularity value);
std::string_view recipe_name(WeightClip value);
std::string_view recipe_name(ActivationGranularity value);
std::string_view recipe_name(ScaleRule value);
std::string_view recipe_name(CalibrationInputs value);
std::string_view recipe_name(StageKind value);
std::string_view recipe_name(ExportFormat value);
std::string_view recipe_name(Device value);

}  // namespace sq::io
