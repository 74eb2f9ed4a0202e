// Token files for calibration and evaluation: raw little-endian uint16 (.u16) or uint32 (.u32)
// streams, or NumPy .npy arrays (1-D stream or 2-D [sequences, seq_len]) of uint16/uint32/int32/
// int64.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace sq::io {

struct TokenData {
  std::vector<std::uint32_t> tokens;
  std::int64_t seq_len = 0;  // from a 2-D .npy; 0 for a flat stream
};

// Throws naming the file (and the offending position) on an unknown extension, a truncated
// file, a bad .npy header, negative ids or ids that do not fit uint32.
TokenData read_tokens(const std::string& path);

// Writes a 2-D .npy [n_seq, seq_len]: uint16 when every id fits, else uint32. Atomic.
void write_tokens_npy(const std::string& path, std::span<const std::uint32_t> tokens,
                      std::int64_t n_seq, std::int64_t seq_len);

// Writes any f32 tensor as a C-order '<f4' .npy of its shape (logit dumps for comparisons).
void write_npy_f32(const std::string& path, const Tensor& values);

}  // namespace sq::io
