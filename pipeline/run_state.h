// The run directory of `shardquant run`: what a run has finished, kept so that a killed or
// preempted job resumes where it stopped (DESIGN §5, docs/FORMATS.md "Run directory").
//
//   RUN_DIR/run.json                       identity: recipe (canonical) and its hash, model
//                                          fingerprint, calibration tokens' digest; written once
//   RUN_DIR/blocks/block-00012.h5          one HDF5 file per block, rewritten after each stage
//   RUN_DIR/hidden/b00040.s000016-000032.h5  hidden states entering block 40 for calibration
//                                          sequences [16, 32): written at pipeline-stage inputs
//   RUN_DIR/manifest/a0003.r00007.json     what rank 7 of attempt 3 committed: file, SHA-256,
//                                          stages done; replaced atomically after every commit
//
// A checkpoint file counts only when its SHA-256 equals one a manifest recorded for it: a file
// renamed into place but not yet recorded, torn, truncated or bit-flipped is recomputed. Each
// attempt's ranks write their own manifest files, so no two processes ever write one file and a
// resume with another rank count still sees every earlier record.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/recipe.h"

namespace sq::pipeline {

inline constexpr int kRunFormatVersion = 1;

// What must be equal for a resume to continue a run.
struct RunIdentity {
  std::string recipe_canonical;    // io::Recipe::canonical()
  std::string recipe_hash;         // SHA-256 of recipe_canonical
  std::string model_fingerprint;   // model_fingerprint(model_dir)
  std::string calibration_digest;  // SHA-256 of the calibration token file
  std::string recipe_file;         // absolute path of the recipe (to resume without naming it)
};
RunIdentity identify_run(const io::Recipe& recipe);

// SHA-256 over config.json, every *.safetensors file's name, size and header, and 16 evenly
// spaced 4 KiB samples of each file's data: it tells models apart without reading 140 GB.
std::string model_fingerprint(const std::string& model_dir);

struct ManifestEntry {
  std::string file;                         // relative to the run directory
  std::string digest;                       // SHA-256 of the whole file
  std::string kind;                         // "block" | "hidden"
  int block = -1;                           // the block; for hidden states, the block they enter
  int stages_done = 0;                      // block files
  std::int64_t first_seq = 0, end_seq = 0;  // hidden files: calibration sequences [first, end)
};

class RunDirectory {
 public:
  explicit RunDirectory(std::string root) : root_(std::move(root)) {}
  const std::string& root() const { return root_; }

  // A new run: refuses an existing non-empty directory; creates the layout and run.json. Throws
  // sq::Error naming the path when it cannot (e.g. a parent is a regular file).
  void create(const RunIdentity& identity) const;
  // Reads run.json; throws saying exactly what differs from `identity`.
  void check_resume(const RunIdentity& identity) const;
  // The recipe file recorded in run.json (resume without naming the recipe).
  static std::string recorded_recipe(const std::string& root);

  std::string block_file(int block) const;  // relative paths
  std::string hidden_file(int block, std::int64_t first_seq, std::int64_t end_seq) const;
  std::string manifest_file(int attempt, int rank) const;
  std::string absolute(const std::string& relative) const;

  // One more than the highest attempt whose manifest exists (0 for a new run).
  int next_attempt() const;
  // Every entry of every manifest file; an unreadable manifest is reported and skipped (its
  // files are then recomputed).
  std::vector<ManifestEntry> read_manifests() const;

 private:
  std::string root_;
};

// This rank's manifest for this attempt: record() replaces the entry for the same file and
// rewrites the whole manifest atomically (temporary file + fsync + rename).
class Manifest {
 public:
  Manifest(const RunDirectory& dir, int attempt, int rank);
  void record(const ManifestEntry& entry);

 private:
  std::string path_;
  std::vector<ManifestEntry> entries_;
};

// The record whose digest equals the file's SHA-256, or nothing when the file does not exist or
// no record matches (logged, with the reason). `file` relative to the run directory.
std::optional<ManifestEntry> verified_entry(const RunDirectory& dir,
                                            const std::vector<ManifestEntry>& entries,
                                            const std::string& file);

}  // namespace sq::pipeline
