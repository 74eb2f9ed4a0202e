// Flash-style causal GQA attention in fp32 (see attention.h).
//
// A thread block of kWarps warps takes kRowsPerBlock consecutive query rows of one (sequence,
// q head); warp w owns kRowsPerWarp consecutive rows of them. The block stages its queries in
// shared memory once, then walks the keys in tiles of 32: all threads copy the tile's K and V rows
// into shared memory (zero padded up to kDim dims), and each warp, for each of its rows,
//   1. scores: lane j computes q . k_j for key j of the tile (k_j read as float4 from rows padded
//      by 4 floats, so the 8 lanes of a quarter warp hit 8 different bank groups; q is a
//      broadcast read);
//   2. online softmax: one warp max and one warp sum (__shfl_xor_sync) per tile; the running sum
//      and the accumulator are rescaled by expf(m_old - m_new);
//   3. p x v: p_j is broadcast with __shfl_sync and each lane accumulates p_j v_j into its own
//      kDim / 32 output dims (vectors of up to 4 floats, consecutive across lanes).
// Several rows per warp reuse each shared-memory read of k and v kRowsPerWarp times. Keys past the
// block's last query are never loaded, a warp skips the tiles past its last query and stops p x v
// at its last visible key, and a masked key gets p = expf(-inf) = 0 exactly. Blocks are numbered
// heaviest row tile first (late rows see the most keys) so the grid does not end on a long tail;
// consecutive blocks are the heads of one row tile, so a GQA group reads its K/V tiles from L2.
//
// Every sum has a fixed order for a given shape (butterfly shuffles give all lanes the same bits),
// so results are deterministic. Error vs the CPU: see attention.h.
#include "kernels/cuda/attention.h"

#include <climits>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda {
namespace {

using detail::kWarp;
using detail::warp_max;
using detail::warp_sum;

constexpr int kTileKeys = kWarp;  // one key per lane in the score step
constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kThreads = kWarps * kWarp;
constexpr unsigned kFullMask = 0xffffffffu;

// Shared-memory layout and per-lane ownership for head dims padded to kDim (32, 64, 128 or 256).
template <int kDim>
struct Layout {
  static constexpr int kPerLane = kDim / kWarp;             // output dims per lane
  static constexpr int kVec = kPerLane < 4 ? kPerLane : 4;  // floats per vector access
  static constexpr int kVecs = kPerLane / kVec;             // vectors per lane
  // K rows padded by 4 floats: row stride = 4 (mod 32) banks, so lanes j..j+7 reading the same
  // float4 column of 8 consecutive rows touch disjoint banks.
  static constexpr int kKStride = kDim + 4;
  static constexpr int kKFloats = kTileKeys * kKStride;
  static constexpr int kVFloats = kTileKeys * kDim;
  static constexpr int kQFloats = kRowsPerBlock * kDim;
  static constexpr std::size_t kBytes = sizeof(float) * (kKFloats + kVFloats + kQFloats);
  static_assert(kDim % (kWarp * kVec) == 0 && kKFloats % 4 == 0 && kVFloats % 4 == 0,
                "every region must start 16-byte aligned");
};

struct Params {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  i64 tq, tk, q_heads, head_dim, group;  // group = q_heads / kv_heads
  i64 q_stride, kv_stride, out_stride;
  i64 row_tiles;    // ceil(tq / kRowsPerBlock)
  i64 heads_total;  // n_seq x q_heads
  float scale;
  bool vec4;  // head_dim, strides and base pointers allow float4 loads of q, k and v rows
};

// Copies rows [0, n_rows) of a strided [rows, head_dim] slab into shared memory (row stride
// dst_stride, kDim dims per row); dims >= head_dim and rows >= valid_rows become 0, so padded
// dims add nothing to dot products and unloaded rows hold no stale values.
template <int kDim>
__device__ inline void load_rows(const float* __restrict__ src, i64 stride, i64 head_dim,
                                 int valid_rows, int n_rows, float* __restrict__ dst,
                                 int dst_stride, bool vec4) {
  if (vec4) {  // head_dim % 4 == 0: a float4 starting below head_dim lies wholly inside it
    constexpr int kPerRow = kDim / 4;
    for (int i = threadIdx.x; i < n_rows * kPerRow; i += blockDim.x) {
      const int r = i / kPerRow, c = (i % kPerRow) * 4;
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < valid_rows && c < head_dim)
        x = *reinterpret_cast<const float4*>(src + r * stride + c);
      *reinterpret_cast<float4*>(dst + r * dst_stride + c) = x;
    }
  } else {
    for (int i = threadIdx.x; i < n_rows * kDim; i += blockDim.x) {
      const int r = i / kDim, c = i % kDim;
      dst[r * dst_stride + c] = r < valid_rows && c < head_dim ? src[r * stride + c] : 0.0f;
    }
  }
}

template <int kVec>
__device__ inline void load_vec(const float* src, float (&dst)[kVec]) {
  if constexpr (kVec == 4) {
    const float4 x = *reinterpret_cast<const float4*>(src);
    dst[0] = x.x;
    dst[1] = x.y;
    dst[2] = x.z;
    dst[3] = x.w;
  } else if constexpr (kVec == 2) {
    const float2 x = *reinterpret_cast<const float2*>(src);
    dst[0] = x.x;
    dst[1] = x.y;
  } else {
    dst[0] = src[0];
  }
}

template <int kDim>
__global__ void __launch_bounds__(kThreads) attention_kernel(Params p) {
  using L = Layout<kDim>;
  extern __shared__ float4 smem[];
  float* ks = reinterpret_cast<float*>(smem);
  float* vs = ks + L::kKFloats;
  float* qs = vs + L::kVFloats;

  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;

  const i64 block = blockIdx.x;
  const i64 row_tile = p.row_tiles - 1 - block / p.heads_total;  // heaviest first
  const i64 bh = block % p.heads_total;
  const i64 b = bh / p.q_heads, h = bh % p.q_heads, kvh = h / p.group;
  const i64 r0 = row_tile * kRowsPerBlock;  // first row of the block within its sequence
  const i64 offset = p.tk - p.tq;           // absolute position of query 0
  const int block_rows = static_cast<int>(p.tq - r0 < kRowsPerBlock ? p.tq - r0 : kRowsPerBlock);
  const i64 key_end = offset + r0 + block_rows;  // the block needs keys [0, key_end), <= tk

  const float* qb = p.q + (b * p.tq + r0) * p.q_stride + h * p.head_dim;
  const float* kb = p.k + b * p.tk * p.kv_stride + kvh * p.head_dim;
  const float* vb = p.v + b * p.tk * p.kv_stride + kvh * p.head_dim;
  load_rows<kDim>(qb, p.q_stride, p.head_dim, block_rows, kRowsPerBlock, qs, kDim, p.vec4);

  // This warp's rows: local rows first_local .. first_local + warp_rows - 1 (none past tq).
  const int first_local = warp * kRowsPerWarp;
  const int left = block_rows - first_local;
  const int warp_rows = left < 0 ? 0 : (left < kRowsPerWarp ? left : kRowsPerWarp);
  const i64 first_pos = offset + r0 + first_local;
  const i64 last_pos = warp_rows > 0 ? first_pos + warp_rows - 1 : -1;  // -1: idle warp

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][L::kPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < L::kPerLane; ++i) acc[r][i] = 0.0f;
  }
  const int n_vec4 = static_cast<int>((p.head_dim + 3) / 4);  // dims past head_dim are 0

  for (i64 k0 = 0; k0 < key_end; k0 += kTileKeys) {
    const int tile_keys = static_cast<int>(key_end - k0 < kTileKeys ? key_end - k0 : kTileKeys);
    __syncthreads();  // every warp is done with the previous tile
    load_rows<kDim>(kb + k0 * p.kv_stride, p.kv_stride, p.head_dim, tile_keys, kTileKeys, ks,
                    L::kKStride, p.vec4);
    load_rows<kDim>(vb + k0 * p.kv_stride, p.kv_stride, p.head_dim, tile_keys, kTileKeys, vs, kDim,
                    p.vec4);
    __syncthreads();  // the tile (and, on the first pass, the queries) is visible to every warp
    if (k0 > last_pos) continue;  // warp-uniform: the whole tile is masked for this warp's rows

    // 1. Scores of key k0 + lane for each row.
    float s[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) s[r] = 0.0f;
    const float4* krow = reinterpret_cast<const float4*>(ks + lane * L::kKStride);
    const float4* qrows = reinterpret_cast<const float4*>(qs + first_local * kDim);
#pragma unroll 4
    for (int c = 0; c < n_vec4; ++c) {
      const float4 kk = krow[c];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float4 qq = qrows[r * (kDim / 4) + c];
        s[r] = fmaf(qq.x, kk.x, s[r]);
        s[r] = fmaf(qq.y, kk.y, s[r]);
        s[r] = fmaf(qq.z, kk.z, s[r]);
        s[r] = fmaf(qq.w, kk.w, s[r]);
      }
    }

    // 2. Online softmax. A row takes part when it sees key k0 (so the tile max is finite and no
    // expf(-inf - -inf) arises); the condition depends on the row only, so it is warp-uniform.
    const i64 key = k0 + lane;
    float prob[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const i64 pos = first_pos + r;
      if (r < warp_rows && k0 <= pos) {
        const float score = key <= pos ? s[r] * p.scale : -INFINITY;
        const float m_new = fmaxf(m[r], warp_max(score));
        const float alpha = expf(m[r] - m_new);  // 0 on the row's first tile (m = -inf)
        prob[r] = expf(score - m_new);
        l[r] = l[r] * alpha + warp_sum(prob[r]);
        m[r] = m_new;
#pragma unroll
        for (int i = 0; i < L::kPerLane; ++i) acc[r][i] *= alpha;
      } else {
        prob[r] = 0.0f;
      }
    }

    // 3. acc += p_j v_j over the keys any row of this warp sees (<= tile_keys).
    const int n_keys =
        static_cast<int>(last_pos - k0 + 1 < kTileKeys ? last_pos - k0 + 1 : kTileKeys);
#pragma unroll 4
    for (int j = 0; j < n_keys; ++j) {
      float pj[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) pj[r] = __shfl_sync(kFullMask, prob[r], j);
      const float* vrow = vs + j * kDim;
#pragma unroll
      for (int g = 0; g < L::kVecs; ++g) {
        float vv[L::kVec];
        load_vec<L::kVec>(vrow + (lane + g * kWarp) * L::kVec, vv);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
          for (int w = 0; w < L::kVec; ++w)
            acc[r][g * L::kVec + w] = fmaf(pj[r], vv[w], acc[r][g * L::kVec + w]);
        }
      }
    }
  }

  // Normalise and store this lane's dims of each row (l >= 1: the row max contributes expf(0)).
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (r >= warp_rows) continue;
    float* o = p.out + (b * p.tq + r0 + first_local + r) * p.out_stride + h * p.head_dim;
#pragma unroll
    for (int g = 0; g < L::kVecs; ++g) {
#pragma unroll
      for (int w = 0; w < L::kVec; ++w) {
        const i64 dim = static_cast<i64>(lane + g * kWarp) * L::kVec + w;
        if (dim < p.head_dim) o[dim] = acc[r][g * L::kVec + w] / l[r];
      }
    }
  }
}

template <int kDim>
void launch(const Params& p, i64 blocks, cudaStream_t stream) {
  constexpr std::size_t bytes = Layout<kDim>::kBytes;
  if constexpr (bytes > 48 * 1024) {  // above the default limit: opt in (Hopper allows 227 KiB)
    SQ_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<kDim>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  }
  attention_kernel<kDim><<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(p);
  SQ_CUDA_CHECK(cudaGetLastError());
}

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

constexpr const char* kWho = "cuda::attention";

// Every argument, before anything touches the device. Products are avoided (division instead)
// so absurd values cannot overflow into a passing check.
void check_shape(const AttentionShape& s, i64 n_seq) {
  if (n_seq < 0) fail("{}: n_seq {} is negative", kWho, n_seq);
  if (s.tq < 0) fail("{}: tq {} is negative", kWho, s.tq);
  if (s.tk < s.tq)
    fail("{}: tk {} is below tq {} (query i sits at position tk - tq + i)", kWho, s.tk, s.tq);
  if (s.q_heads < 1) fail("{}: q_heads {} must be at least 1", kWho, s.q_heads);
  if (s.kv_heads < 1) fail("{}: kv_heads {} must be at least 1", kWho, s.kv_heads);
  if (s.q_heads % s.kv_heads != 0)
    fail("{}: q_heads {} is not a multiple of kv_heads {}", kWho, s.q_heads, s.kv_heads);
  if (s.head_dim < 1 || s.head_dim > kAttentionMaxHeadDim)
    fail("{}: head_dim {} is outside the supported 1..{}", kWho, s.head_dim, kAttentionMaxHeadDim);
  if (s.q_stride / s.head_dim < s.q_heads)
    fail("{}: q_stride {} is below q_heads {} x head_dim {}", kWho, s.q_stride, s.q_heads,
         s.head_dim);
  if (s.kv_stride / s.head_dim < s.kv_heads)
    fail("{}: kv_stride {} is below kv_heads {} x head_dim {}", kWho, s.kv_stride, s.kv_heads,
         s.head_dim);
  if (s.out_stride / s.head_dim < s.q_heads)
    fail("{}: out_stride {} is below q_heads {} x head_dim {}", kWho, s.out_stride, s.q_heads,
         s.head_dim);
}

}  // namespace

void attention(const AttentionShape& s, i64 n_seq, const float* q, const float* k, const float* v,
               float* out, cudaStream_t stream) {
  check_shape(s, n_seq);
  if (n_seq == 0 || s.tq == 0) return;
  if (q == nullptr || k == nullptr || v == nullptr || out == nullptr)
    fail("{}: null device pointer (q {}, k {}, v {}, out {})", kWho, static_cast<const void*>(q),
         static_cast<const void*>(k), static_cast<const void*>(v), static_cast<const void*>(out));

  // One block per (row tile, sequence, head), all in gridDim.x (at most INT_MAX blocks).
  const i64 row_tiles = (s.tq + kRowsPerBlock - 1) / kRowsPerBlock;
  if (n_seq > INT_MAX / s.q_heads || n_seq * s.q_heads > INT_MAX / row_tiles)
    fail("{}: n_seq {} x q_heads {} x {} row tiles exceed the {} blocks of one grid", kWho, n_seq,
         s.q_heads, row_tiles, INT_MAX);
  const i64 heads_total = n_seq * s.q_heads;
  const i64 blocks = heads_total * row_tiles;

  Params p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.tq = s.tq;
  p.tk = s.tk;
  p.q_heads = s.q_heads;
  p.head_dim = s.head_dim;
  p.group = s.q_heads / s.kv_heads;
  p.q_stride = s.q_stride;
  p.kv_stride = s.kv_stride;
  p.out_stride = s.out_stride;
  p.row_tiles = row_tiles;
  p.heads_total = heads_total;
  p.scale = s.scale;
  p.vec4 = s.head_dim % 4 == 0 && s.q_stride % 4 == 0 && s.kv_stride % 4 == 0 && aligned16(q) &&
           aligned16(k) && aligned16(v);

  if (s.head_dim <= 32) {
    launch<32>(p, blocks, stream);
  } else if (s.head_dim <= 64) {
    launch<64>(p, blocks, stream);
  } else if (s.head_dim <= 128) {
    launch<128>(p, blocks, stream);
  } else {
    launch<256>(p, blocks, stream);
  }
}

}  // namespace sq::cuda
