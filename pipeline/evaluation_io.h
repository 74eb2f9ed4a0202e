// Inputs and outputs of an evaluation shared by `run` and `eval`: token sets cut into sequences,
// and the comparison table / JSON. Built in every configuration (no MPI, no HDF5).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "model/evaluate.h"

namespace sq::pipeline {

// A token file cut into n_seq sequences of seq_len: seq_len given, else the .npy's second dim,
// else min(2048, max_position_embeddings); at most `max_sequences`; trailing tokens dropped (and
// logged); every id checked against the vocabulary (errors name the file and the index).
struct TokenSet {
  std::vector<std::uint32_t> ids;
  std::int64_t n_seq = 0, seq_len = 0;
};
TokenSet load_token_set(const std::string& path, std::optional<std::int64_t> seq_len,
                        std::optional<std::int64_t> max_sequences, const io::ModelConfig& config);

// Prints the comparison table and writes it as JSON (when `json_path` is not empty).
void report_comparison(const model::Comparison& c, const std::string& test_name,
                       const std::string& reference_name, const std::string& json_path);

}  // namespace sq::pipeline
