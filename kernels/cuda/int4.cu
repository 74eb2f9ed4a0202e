// 4-bit packing, per-token 4-bit quantization and the W4A4 GEMM (see int4.h).
//
// The GEMM targets decode (m <= 16), where it is a stream over the 4-bit weights: at most 16 x
// rows share each weight element, so the time is the time to read w. It runs on the int8 tensor
// cores through mma.sync.m16n8k32 (s8 x s8 -> s32), whose register fragments the PTX ISA
// documents (lane = 4 g + t):
//   A (16 x 32, row): a0 = A[g][4t..4t+3],       a1 = A[g+8][4t..4t+3],
//                      a2 = A[g][16+4t..16+4t+3], a3 = A[g+8][16+4t..16+4t+3]
//   B (32 x 8, col):   b0 = B[4t..4t+3][g],       b1 = B[16+4t..16+4t+3][g]
//   C (16 x 8, s32):   c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
// A lane thus holds the same 8 k-slots {4t..4t+3, 16+4t..16+4t+3} of A (rows g, g + 8) as of B
// (column g). A dot product does not care which physical k sits in which slot as long as A and B
// agree, so slot 4t + i holds element 2i and slot 16 + 4t + i element 2i + 1 of one packed word:
// the word's even nibbles (word & 0x0F0F0F0F) are b0 as they lie, its odd nibbles ((word >> 4) &
// 0x0F0F0F0F) are b1, and x's word unpacks the same way into a0 / a2 (row g) and a1 / a3 (row
// g + 8). No byte shuffles, no shared memory between the loads and the tensor cores.
//
// Weights enter as their stored nibbles u = w + 8 (0..15, valid s8), so each weight word costs 3
// integer operations; x (16 rows, shared by every weight row) is converted to signed codes. Then
// sum x u = sum x w + 8 sum x, and one more MMA per step with B = all -8 accumulates -8 sum x per
// row, added to every tile at the end. Intermediate sums stay below 120 K < 2^31 (cpu::kW4A4MaxK).
//
// Tiling: a block of 8 warps owns 32 weight rows (4 n8 tiles) and one 16-row tile of x. K is split
// inside the block: warp i takes the chunks i, i + 8, i + 16, ... of 16 words (128 k) of every
// row, so the 8 warps read 8 adjacent 64-byte pieces of each row at a time. Per chunk a lane loads
// 16 bytes of each of its 4 weight rows (words 4t..4t+3 of row tile * 8 + g: one 16-byte load per
// row, coalesced into 64-byte runs per row) and 16 bytes of x rows g and g + 8, and the next chunk
// is loaded before the current one is multiplied (two chunks in flight per warp). Weight loads
// are streaming (__ldcs: evict-first, read once), x loads go through the read-only path and stay in
// L1 / L2 for the other blocks. The warps' partial int32 tiles are reduced in shared memory in a
// fixed order (warp 0, 1, ..., 7), then the store applies the epilogue: one launch.
//
// Masking: rows of x past m and words past the row are read as 0x88888888 (codes 0), rows of w
// past n as 0 (any value: their x is 0 or their outputs are not stored). In the last word of an x
// row the padding nibbles (zero bits, code -8) are replaced by 8 (code 0), so columns k >= K add
// nothing whatever the weights' padding holds.
#include "kernels/cuda/int4.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/quant_device.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda {
namespace {

using u32 = std::uint32_t;

constexpr int kCodeMin = -8;
constexpr int kCodeMax = 7;
constexpr int kOffset = 8;                // stored nibble = code + 8
constexpr int kPerWord = 8;               // nibbles per int32 word
constexpr u32 kZeroCodes = 0x88888888u;   // eight stored nibbles of code 0
constexpr u32 kLowNibbles = 0x0F0F0F0Fu;  // the even elements of a word, one per byte
constexpr u32 kMinusEight = 0xF8F8F8F8u;  // four s8 bytes of -8

bool aligned(const void* ptr, std::size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(ptr) % bytes == 0;
}

// A pointer argument must be given and aligned to its element type.
void require_pointer(const char* who, const void* ptr, const char* name, std::size_t alignment) {
  if (ptr == nullptr) fail("{}: {} is null", who, name);
  if (!aligned(ptr, alignment)) fail("{}: {} is not {}-byte aligned", who, name, alignment);
}

// ---- packing ---------------------------------------------------------------------------------

constexpr int kPackThreads = 256;

// One thread per packed word; codes clamped to [-8, 7]; nibbles past the row's end stay 0.
__global__ void pack_int4_kernel(const std::int8_t* __restrict__ q, i64 rows, i64 cols, i64 words,
                                 std::int32_t* __restrict__ packed) {
  const i64 total = rows * words;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const i64 row = i / words;
    const i64 first = (i - row * words) * kPerWord;  // the column of nibble 0
    const std::int8_t* src = q + row * cols + first;
    const int count = cols - first < kPerWord ? static_cast<int>(cols - first) : kPerWord;
    u32 word = 0;
    for (int e = 0; e < count; ++e) {
      const int v = min(max(static_cast<int>(src[e]), kCodeMin), kCodeMax);
      word |= static_cast<u32>(v + kOffset) << (4 * e);
    }
    packed[i] = static_cast<std::int32_t>(word);
  }
}

// ---- per-token quantization ----------------------------------------------------------------

// The stored nibble of one value: cpu::quantize_value with zero point 0, plus 8.
__device__ inline u32 nibble(float v, float scale) {
  return static_cast<u32>(detail::quantize_value(v, scale, 0, kCodeMin, kCodeMax) + kOffset);
}

// One block per row: min / max (NaN skipped), the scale, then each thread packs whole words.
// kVec: cols % 8 == 0 and x 16-byte aligned, so a row is read as float4 and a word is 2 float4.
template <bool kVec>
__global__ void quantize_int4_rows_kernel(const float* __restrict__ x, i64 cols, i64 words,
                                          detail::Format f, std::int32_t* __restrict__ packed,
                                          float* __restrict__ scale) {
  const i64 row = blockIdx.x;
  const float* xr = x + row * cols;
  float lo = 0.0f, hi = 0.0f;
  if constexpr (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    for (i64 j = threadIdx.x; j < cols / 4; j += blockDim.x) {
      const float4 v = x4[j];
      detail::fold_range(v.x, lo, hi);
      detail::fold_range(v.y, lo, hi);
      detail::fold_range(v.z, lo, hi);
      detail::fold_range(v.w, lo, hi);
    }
  } else {
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) detail::fold_range(xr[j], lo, hi);
  }
  detail::block_range(lo, hi);
  float s = 0.0f;
  int zero_point = 0;  // symmetric: always 0
  detail::range_to_qparams(lo, hi, f, s, zero_point);
  if (threadIdx.x == 0) scale[row] = s;
  std::int32_t* pr = packed + row * words;
  for (i64 w = threadIdx.x; w < words; w += blockDim.x) {
    const i64 first = w * kPerWord;
    u32 word = 0;
    if constexpr (kVec) {
      const float4* x8 = reinterpret_cast<const float4*>(xr + first);
      const float4 a = x8[0], b = x8[1];
      word = nibble(a.x, s) | nibble(a.y, s) << 4 | nibble(a.z, s) << 8 | nibble(a.w, s) << 12 |
             nibble(b.x, s) << 16 | nibble(b.y, s) << 20 | nibble(b.z, s) << 24 |
             nibble(b.w, s) << 28;
    } else {
      const int count = cols - first < kPerWord ? static_cast<int>(cols - first) : kPerWord;
      for (int e = 0; e < count; ++e) word |= nibble(xr[first + e], s) << (4 * e);
    }
    pr[w] = static_cast<std::int32_t>(word);
  }
}

// ---- W4A4 GEMM -----------------------------------------------------------------------------

constexpr int kWarp = detail::kWarp;
constexpr int kMmaM = 16;                 // x rows per tile
constexpr int kMmaN = 8;                  // weight rows per MMA
constexpr int kTilesN = 4;                // n8 tiles per warp
constexpr int kBlockN = kMmaN * kTilesN;  // weight rows per block
constexpr int kSplitK = 8;                // warps per block, each a share of K
constexpr int kGemmThreads = kSplitK * kWarp;
constexpr int kChunkWords = 16;  // one warp step along K: 16 words = 128 k of each row
constexpr int kLaneWords = 4;    // of which one lane loads 4 (16 bytes)
constexpr i64 kMaxGridY = 65535;
static_assert(kChunkWords == 4 * kLaneWords, "4 lanes (t = 0..3) cover a chunk of each row");
static_assert(kGemmThreads == kTilesN * kWarp * 2, "the reduction gives each thread 2 outputs");

enum class Out { int32, bf16, f16 };

struct Epilogue {
  const float* x_scale = nullptr;
  const float* w_scale = nullptr;
  const float* bias = nullptr;
  void* out = nullptr;  // int32 acc or 16-bit bits, [m, n]
};

// What one lane holds of one chunk: words 4t..4t+3 of the chunk of its 4 weight rows and of its
// x rows g and g + 8.
struct Chunk {
  uint4 w[kTilesN];
  uint4 x0, x1;
};

__device__ inline u32 word_at(const uint4& v, int j) {
  return j == 0 ? v.x : (j == 1 ? v.y : (j == 2 ? v.z : v.w));
}

// Signed codes of a word's even (0, 2, 4, 6) and odd (1, 3, 5, 7) elements, one per byte:
// (u + 0x78) ^ 0x80 is u - 8 as a byte, and u <= 15 never carries into the next byte.
__device__ inline u32 signed_even(u32 word) {
  return ((word & kLowNibbles) + 0x78787878u) ^ 0x80808080u;
}
__device__ inline u32 signed_odd(u32 word) {
  return (((word >> 4) & kLowNibbles) + 0x78787878u) ^ 0x80808080u;
}

// D += A B, int8 in, int32 accumulate (exact).
__device__ inline void mma_s8(int (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the W4A4 GEMM needs mma.sync.m16n8k32 (compute capability 8.0 or newer)"
#endif
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Words [word, word + 4) of a row, `fill` where the row is absent or the words lie past its end.
// kVec: the row stride is a multiple of 4 words and the rows are 16-byte aligned, so the 4 words
// are all inside or all outside the row.
template <bool kVec, bool kStream>
__device__ inline uint4 load_words(const u32* row, int word, int words, u32 fill) {
  if constexpr (kVec) {
    if (row == nullptr || word >= words) return make_uint4(fill, fill, fill, fill);
    const auto* p = reinterpret_cast<const uint4*>(row + word);
    if constexpr (kStream) return __ldcs(p);
    return __ldg(p);
  } else {
    u32 v[kLaneWords];
#pragma unroll
    for (int e = 0; e < kLaneWords; ++e) {
      v[e] = fill;
      if (row != nullptr && word + e < words) {
        if constexpr (kStream) {
          v[e] = __ldcs(row + word + e);
        } else {
          v[e] = __ldg(row + word + e);
        }
      }
    }
    return make_uint4(v[0], v[1], v[2], v[3]);
  }
}

// The last word of an x row with its padding nibbles (keep's zero bits) set to code 0.
__device__ inline uint4 mask_tail(const uint4& v, int word, int tail_word, u32 keep) {
  const auto fix = [&](u32 x, int e) {
    return word + e == tail_word ? (x & keep) | (kZeroCodes & ~keep) : x;
  };
  return make_uint4(fix(v.x, 0), fix(v.y, 1), fix(v.z, 2), fix(v.w, 3));
}

// Where a lane reads: its weight rows (null past n) and x rows (null past m), the row stride and
// the partial last word of x rows (tail_chunk -1 when k % 8 == 0).
struct Rows {
  const u32* w[kTilesN];
  const u32* x0;
  const u32* x1;
  int words;
  int tail_chunk;
  int tail_word;
  u32 tail_keep;
};

template <bool kVec>
__device__ inline void load_chunk(Chunk& c, int chunk, int t, const Rows& r) {
  const int word = chunk * kChunkWords + kLaneWords * t;
#pragma unroll
  for (int tile = 0; tile < kTilesN; ++tile)
    c.w[tile] = load_words<kVec, true>(r.w[tile], word, r.words, 0u);
  c.x0 = load_words<kVec, false>(r.x0, word, r.words, kZeroCodes);
  c.x1 = load_words<kVec, false>(r.x1, word, r.words, kZeroCodes);
  if (chunk == r.tail_chunk) {  // the same for the whole warp
    c.x0 = mask_tail(c.x0, word, r.tail_word, r.tail_keep);
    c.x1 = mask_tail(c.x1, word, r.tail_word, r.tail_keep);
  }
}

// The 4 MMA steps of a chunk: step j multiplies word j of every lane's 16 bytes, i.e. chunk words
// 4t + j over t = 0..3 (32 k), for each of the 4 tiles, plus the -8 sum(x) correction.
__device__ inline void compute_chunk(const Chunk& c, int (&acc)[kTilesN][4], int (&corr)[4]) {
#pragma unroll
  for (int j = 0; j < kLaneWords; ++j) {
    const u32 x0 = word_at(c.x0, j), x1 = word_at(c.x1, j);
    const u32 a0 = signed_even(x0), a2 = signed_odd(x0);
    const u32 a1 = signed_even(x1), a3 = signed_odd(x1);
#pragma unroll
    for (int tile = 0; tile < kTilesN; ++tile) {
      const u32 w = word_at(c.w[tile], j);
      mma_s8(acc[tile], a0, a1, a2, a3, w & kLowNibbles, (w >> 4) & kLowNibbles);
    }
    mma_s8(corr, a0, a1, a2, a3, kMinusEight, kMinusEight);
  }
}

// One output: the int32 sum, or dequantize_int8_acc's arithmetic (gemm.cu) and its rounding.
template <Out kOut>
__device__ inline void store(const Epilogue& ep, i64 row, i64 col, i64 n, int acc) {
  if constexpr (kOut == Out::int32) {
    static_cast<std::int32_t*>(ep.out)[row * n + col] = acc;
  } else {
    float v = __fmul_rn(__fmul_rn(__int2float_rn(acc), ep.x_scale[row]), ep.w_scale[col]);
    if (ep.bias != nullptr) v = __fadd_rn(v, ep.bias[col]);
    static_cast<std::uint16_t*>(ep.out)[row * n + col] = detail::to_half_bits<kOut == Out::bf16>(v);
  }
}

// grid.x: blocks of kBlockN weight rows; grid.y strides over the 16-row tiles of x.
template <bool kVec, Out kOut>
__global__ void __launch_bounds__(kGemmThreads, 2)
    gemm_w4a4_kernel(const u32* __restrict__ x, i64 m, int k, const u32* __restrict__ w, i64 n,
                     Epilogue ep) {
  __shared__ int4 partial[kSplitK][kTilesN][kWarp];
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int g = lane / 4, t = lane % 4;
  const i64 n0 = static_cast<i64>(blockIdx.x) * kBlockN;

  Rows r;
  r.words = (k + kPerWord - 1) / kPerWord;
  r.tail_chunk = k % kPerWord != 0 ? (r.words - 1) / kChunkWords : -1;
  r.tail_word = r.words - 1;
  r.tail_keep = (1u << (4 * (k % kPerWord))) - 1u;  // the nibbles of columns < k
#pragma unroll
  for (int tile = 0; tile < kTilesN; ++tile) {
    const i64 row = n0 + tile * kMmaN + g;
    r.w[tile] = row < n ? w + row * r.words : nullptr;
  }
  const int chunks = (r.words + kChunkWords - 1) / kChunkWords;
  const i64 m_tiles = (m + kMmaM - 1) / kMmaM;

  for (i64 mt = blockIdx.y; mt < m_tiles; mt += gridDim.y) {
    const i64 r0 = mt * kMmaM + g, r1 = r0 + 8;
    r.x0 = r0 < m ? x + r0 * r.words : nullptr;
    r.x1 = r1 < m ? x + r1 * r.words : nullptr;

    int acc[kTilesN][4] = {};
    int corr[4] = {};
    // Two chunks in flight: the next is loaded before the current one is multiplied. Chunks past
    // the end load as codes 0 without touching memory.
    Chunk a, b;
    load_chunk<kVec>(a, warp, t, r);
    for (int c = warp; c < chunks; c += 2 * kSplitK) {
      load_chunk<kVec>(b, c + kSplitK, t, r);
      compute_chunk(a, acc, corr);
      load_chunk<kVec>(a, c + 2 * kSplitK, t, r);
      if (c + kSplitK < chunks) compute_chunk(b, acc, corr);
    }

    // The correction has the C layout with equal columns: add it to every tile, then hand the
    // warp's partial tiles to the reduction.
#pragma unroll
    for (int tile = 0; tile < kTilesN; ++tile) {
      partial[warp][tile][lane] = make_int4(acc[tile][0] + corr[0], acc[tile][1] + corr[1],
                                            acc[tile][2] + corr[2], acc[tile][3] + corr[3]);
    }
    __syncthreads();
    {
      // Thread -> (tile, source lane, half): half 0 holds c0, c1 (row g), half 1 c2, c3 (g + 8).
      const int tile = static_cast<int>(threadIdx.x) / (2 * kWarp);
      const int src = (static_cast<int>(threadIdx.x) / 2) % kWarp;
      const int half = static_cast<int>(threadIdx.x) % 2;
      int s0 = 0, s1 = 0;
#pragma unroll
      for (int i = 0; i < kSplitK; ++i) {  // fixed order
        const int4 p = partial[i][tile][src];
        s0 += half == 0 ? p.x : p.z;
        s1 += half == 0 ? p.y : p.w;
      }
      const i64 row = mt * kMmaM + src / 4 + 8 * half;
      const i64 col = n0 + tile * kMmaN + 2 * (src % 4);
      if (row < m) {
        if (col < n) store<kOut>(ep, row, col, n, s0);
        if (col + 1 < n) store<kOut>(ep, row, col + 1, n, s1);
      }
    }
    __syncthreads();  // the next m tile overwrites `partial`
  }
}

void check_gemm_shape(const char* who, i64 m, i64 k, i64 n) {
  if (m < 0 || k < 0 || n < 0) fail("{}: negative shape m = {}, k = {}, n = {}", who, m, k, n);
  if (k > cpu::kW4A4MaxK)
    fail("{}: k = {} exceeds {} (the int32 accumulation of 4-bit products could overflow)", who, k,
         cpu::kW4A4MaxK);
}

void check_operands(const char* who, const std::int32_t* x, i64 k, const std::int32_t* w) {
  if (k == 0) return;  // nothing is read
  require_pointer(who, x, "x_packed", 4);
  require_pointer(who, w, "w_packed", 4);
}

template <Out kOut>
void launch_gemm(const char* who, const std::int32_t* x, i64 m, i64 k, const std::int32_t* w, i64 n,
                 const Epilogue& ep, cudaStream_t stream) {
  const i64 words = cpu::int4_row_words(k);
  const i64 blocks_n = (n + kBlockN - 1) / kBlockN;
  if (blocks_n > INT_MAX) fail("{}: n = {} needs more than {} thread blocks", who, n, INT_MAX);
  const i64 m_tiles = (m + kMmaM - 1) / kMmaM;
  const dim3 grid(static_cast<unsigned>(blocks_n),
                  static_cast<unsigned>(std::min<i64>(m_tiles, kMaxGridY)));
  const bool vec = words % kLaneWords == 0 && aligned(x, 16) && aligned(w, 16);
  const auto* xu = reinterpret_cast<const u32*>(x);
  const auto* wu = reinterpret_cast<const u32*>(w);
  const int ki = static_cast<int>(k);  // <= kW4A4MaxK
  if (vec) {
    gemm_w4a4_kernel<true, kOut><<<grid, kGemmThreads, 0, stream>>>(xu, m, ki, wu, n, ep);
  } else {
    gemm_w4a4_kernel<false, kOut><<<grid, kGemmThreads, 0, stream>>>(xu, m, ki, wu, n, ep);
  }
  SQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void pack_int4(const std::int8_t* q, i64 rows, i64 cols, std::int32_t* packed,
               cudaStream_t stream) {
  const char* who = "cuda::pack_int4";
  if (rows < 0 || cols < 0) fail("{}: negative shape [{}, {}]", who, rows, cols);
  const i64 words = cpu::int4_row_words(cols);
  if (rows == 0 || words == 0) return;
  require_pointer(who, q, "q", 1);
  require_pointer(who, packed, "packed", 4);
  const i64 total = rows * words;
  // Enough blocks to fill the GPU many times over; the kernel strides over the rest.
  const i64 blocks = std::min<i64>((total + kPackThreads - 1) / kPackThreads, i64{1} << 16);
  pack_int4_kernel<<<static_cast<unsigned>(blocks), kPackThreads, 0, stream>>>(q, rows, cols, words,
                                                                               packed);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void quantize_per_token_int4(const float* x, i64 rows, i64 cols, const IntFormat& format,
                             std::int32_t* packed, float* scale, cudaStream_t stream) {
  const char* who = "cuda::quantize_per_token_int4";
  if (format.bits != cpu::kInt4Bits || !format.symmetric)
    fail("{}: needs a symmetric 4-bit format, got {} bits {}", who, format.bits,
         format.symmetric ? "symmetric" : "asymmetric");
  if (rows < 0 || cols < 0) fail("{}: negative shape [{}, {}]", who, rows, cols);
  const detail::Format f = detail::resolve(format);
  if (rows == 0) return;
  if (rows > INT_MAX) fail("{}: {} rows exceed the {} blocks of one grid", who, rows, INT_MAX);
  if (cols > 0) {
    require_pointer(who, x, "x", 4);
    require_pointer(who, packed, "packed", 4);
  }
  require_pointer(who, scale, "scale", 4);
  // cols == 0 still writes each row's scale (an empty slice: kMinScale), as the CPU does.
  const i64 words = cpu::int4_row_words(cols);
  const bool vec = cols % kPerWord == 0 && aligned(x, 16);
  const int threads =
      std::max(detail::kWarp, detail::threads_for_cols(words, detail::kMaxBlockThreads));
  const unsigned grid = static_cast<unsigned>(rows);
  if (vec) {
    quantize_int4_rows_kernel<true><<<grid, threads, 0, stream>>>(x, cols, words, f, packed, scale);
  } else {
    quantize_int4_rows_kernel<false>
        <<<grid, threads, 0, stream>>>(x, cols, words, f, packed, scale);
  }
  SQ_CUDA_CHECK(cudaGetLastError());
}

void gemm_w4a4(const std::int32_t* x_packed, i64 m, i64 k, const std::int32_t* w_packed, i64 n,
               std::int32_t* acc, cudaStream_t stream) {
  const char* who = "cuda::gemm_w4a4";
  check_gemm_shape(who, m, k, n);
  if (m == 0 || n == 0) return;
  check_operands(who, x_packed, k, w_packed);
  require_pointer(who, acc, "acc", 4);
  Epilogue ep;
  ep.out = acc;
  launch_gemm<Out::int32>(who, x_packed, m, k, w_packed, n, ep, stream);
}

void linear_w4a4(const std::int32_t* x_packed, const float* x_scale, i64 m, i64 k,
                 const std::int32_t* w_packed, const float* w_scale, const float* bias, i64 n,
                 std::uint16_t* out, Half out_type, cudaStream_t stream) {
  const char* who = "cuda::linear_w4a4";
  check_gemm_shape(who, m, k, n);
  if (m == 0 || n == 0) return;
  check_operands(who, x_packed, k, w_packed);
  require_pointer(who, x_scale, "x_scale", 4);
  require_pointer(who, w_scale, "w_scale", 4);
  if (bias != nullptr) require_pointer(who, bias, "bias", 4);
  require_pointer(who, out, "out", 2);
  Epilogue ep;
  ep.x_scale = x_scale;
  ep.w_scale = w_scale;
  ep.bias = bias;
  ep.out = out;
  switch (out_type) {
    case Half::bf16:
      launch_gemm<Out::bf16>(who, x_packed, m, k, w_packed, n, ep, stream);
      return;
    case Half::f16:
      launch_gemm<Out::f16>(who, x_packed, m, k, w_packed, n, ep, stream);
      return;
  }
  fail("{}: unknown output type {}", who, static_cast<int>(out_type));
}

}  // namespace sq::cuda
