#include "model/device_forward.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/rope.h"

namespace sq::model {

using i64 = std::int64_t;
using cuda::DeviceBuffer;

HostHookBridge::HostHookBridge(ActivationHook& host, bool writes, std::initializer_list<Site> sites)
    : host_(host), writes_(writes) {
  for (bool& on : sites_) on = sites.size() == 0;
  for (Site site : sites) sites_[static_cast<int>(site)] = true;
}

void HostHookBridge::at(Site site, float* x, i64 rows, i64 cols, cudaStream_t stream) {
  if (!sites_[static_cast<int>(site)]) return;
  const auto n = static_cast<std::size_t>(rows * cols);
  buffer_.resize(n);
  SQ_CUDA_CHECK(
      cudaMemcpyAsync(buffer_.data(), x, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
  SQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  host_.at(site, buffer_.data(), rows, cols);
  if (writes_) {
    SQ_CUDA_CHECK(
        cudaMemcpyAsync(x, buffer_.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
    SQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // buffer_ is reused by the next site
  }
}

int select_device(int local_rank, int local_ranks) {
  const int count = cuda::device_count();
  if (count == 0)
    fail("device: cuda, but local rank {} sees no CUDA device (no driver or no GPU on this node)",
         local_rank);
  // Fewer visible devices than ranks on the node, with CUDA_VISIBLE_DEVICES set: the launcher
  // bound devices to ranks (one each, or a few each); the rank takes its first. Two ranks left
  // with the same GPU are refused by the runner's PCI check, naming both.
  const bool bound = count < local_ranks && std::getenv("CUDA_VISIBLE_DEVICES") != nullptr;
  if (!bound && local_ranks > count)
    fail(
        "device: cuda runs one rank per GPU, but this node has {} ranks and {} CUDA device{}; "
        "start at most {} ranks per node",
        local_ranks, count, count == 1 ? "" : "s", count);
  const int device = bound ? 0 : local_rank;
  SQ_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

std::int64_t device_pci_id(int device) {
  int domain = 0, bus = 0, slot = 0;
  SQ_CUDA_CHECK(cudaDeviceGetAttribute(&domain, cudaDevAttrPciDomainId, device));
  SQ_CUDA_CHECK(cudaDeviceGetAttribute(&bus, cudaDevAttrPciBusId, device));
  SQ_CUDA_CHECK(cudaDeviceGetAttribute(&slot, cudaDevAttrPciDeviceId, device));
  return (std::int64_t{domain} << 32) | (std::int64_t{bus} << 8) | std::int64_t{slot};
}

namespace {

enum class GemmType { bf16, f16, f32 };

GemmType gemm_type(DType stored) {
  switch (stored) {
    case DType::bf16:
      return GemmType::bf16;
    case DType::f16:
      return GemmType::f16;
    default:
      return GemmType::f32;
  }
}

struct DeviceLinear {
  DeviceBuffer<std::uint16_t> w16;  // bf16 / f16 bits, [out, in]
  DeviceBuffer<float> w32;          // fp32 checkpoints
  DeviceBuffer<float> bias;         // [out], or empty
  i64 out = 0, in = 0;
  const float* bias_or_null() const { return bias.empty() ? nullptr : bias.data(); }
};

struct DeviceNorm {
  DeviceBuffer<float> weight, bias;
  i64 width = 0;
};

// A copy of `host` on the device, ordered on `stream` and finished on return (cuda::to_device
// copies on the legacy stream, which a non-blocking stream does not wait for).
template <typename T>
DeviceBuffer<T> upload_vector(const std::vector<T>& host, cudaStream_t stream) {
  DeviceBuffer<T> device(host.size());
  if (!host.empty())
    SQ_CUDA_CHECK(cudaMemcpyAsync(device.data(), host.data(), host.size() * sizeof(T),
                                  cudaMemcpyHostToDevice, stream));
  SQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return device;
}

// Grows a buffer to at least `count` elements (contents are not kept).
template <typename T>
void reserve(DeviceBuffer<T>& buffer, i64 count) {
  if (static_cast<i64>(buffer.size()) < count) {
    buffer.reset();
    buffer = DeviceBuffer<T>(static_cast<std::size_t>(count));
  }
}

}  // namespace

struct DeviceBlockForward::Impl {
  GemmType model_type = GemmType::bf16;  // the checkpoint's
  GemmType type = GemmType::bf16;        // the loaded block's
  cuda::Blas blas;
  bool loaded = false;
  DeviceNorm attn_norm, mlp_norm;
  DeviceLinear q, k, v, o, gate, up, down;
  bool gated = false;
  DeviceBuffer<float> staging;  // one fp32 weight on its way to the 16-bit type
  // Activations of one micro-batch.
  DeviceBuffer<float> hidden, xn, qb, kb, vb, attn, out, upb, gateb, act;
  DeviceBuffer<std::uint16_t> x16;
  DeviceBuffer<std::int64_t> positions;
  DeviceBuffer<float> inv_freq;
  i64 positions_for_len = -1, positions_tokens = -1;
};

DeviceBlockForward::DeviceBlockForward(const io::ModelConfig& config)
    : config_(config), impl_(std::make_unique<Impl>()) {
  impl_->model_type = gemm_type(config.torch_dtype);
  SQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    const std::vector<float> inv = rope_inv_freq(config);
    if (!inv.empty()) impl_->inv_freq = upload_vector(inv, stream_);
  } catch (...) {
    cudaStreamDestroy(stream_);
    throw;
  }
}

DeviceBlockForward::~DeviceBlockForward() {
  impl_.reset();  // buffers first: cudaFree synchronizes with the stream's work
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

namespace {

void upload_f32(const Tensor& t, DeviceBuffer<float>& device, cudaStream_t stream) {
  const auto n = static_cast<std::size_t>(t.numel());
  if (device.size() != n) {
    device.reset();
    device = DeviceBuffer<float>(n);
  }
  if (n == 0) return;
  SQ_CUDA_CHECK(cudaMemcpyAsync(device.data(), t.data<float>(), n * sizeof(float),
                                cudaMemcpyHostToDevice, stream));
}

void upload_norm(const char* name, const Norm& norm, DeviceNorm& d, cudaStream_t stream) {
  if (!norm.map.empty())
    fail(
        "device: cuda: the {} norm carries an output map (a channel reorder or reassembly), which "
        "the CUDA block forward does not implement; run this recipe with device: cpu",
        name);
  upload_f32(norm.weight, d.weight, stream);
  if (norm.bias.defined())
    upload_f32(norm.bias, d.bias, stream);
  else
    d.bias.reset();
  d.width = norm.weight.numel();
}

}  // namespace

void DeviceBlockForward::load(const BlockWeights& w, Precision precision) {
  Impl& m = *impl_;
  m.loaded = false;
  m.type = precision == Precision::fp32 ? GemmType::f32 : m.model_type;
  // The fp32 staging of the largest linear, allocated once per load: reallocating it per linear
  // would free memory a conversion may still be reading.
  i64 largest = 0;
  if (m.type != GemmType::f32)
    for (const Linear* l : {&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down})
      if (l->weight.defined()) largest = std::max(largest, l->weight.numel());
  reserve(m.staging, largest);
  upload_norm("attention", w.attn_norm, m.attn_norm, stream_);
  upload_norm("MLP", w.mlp_norm, m.mlp_norm, stream_);
  m.gated = config_.activation == io::Activation::silu;
  auto upload = [&](const Linear& l, DeviceLinear& d) {
    d.out = l.out_features();
    d.in = l.in_features();
    if (l.bias.defined())
      upload_f32(l.bias, d.bias, stream_);
    else
      d.bias.reset();
    if (m.type == GemmType::f32) {
      d.w16.reset();
      upload_f32(l.weight, d.w32, stream_);
      return;
    }
    d.w32.reset();
    // fp32 on the host (model::Model converts), the GEMM type on the device: convert there.
    const i64 n = d.out * d.in;
    SQ_CUDA_CHECK(cudaMemcpyAsync(m.staging.data(), l.weight.data<float>(),
                                  static_cast<std::size_t>(n) * sizeof(float),
                                  cudaMemcpyHostToDevice, stream_));
    if (static_cast<i64>(d.w16.size()) != n) {
      d.w16.reset();
      d.w16 = DeviceBuffer<std::uint16_t>(static_cast<std::size_t>(n));
    }
    if (m.type == GemmType::bf16)
      cuda::to_bf16(m.staging.data(), n, d.w16.data(), stream_);
    else
      cuda::to_f16(m.staging.data(), n, d.w16.data(), stream_);
  };
  upload(w.q, m.q);
  upload(w.k, m.k);
  upload(w.v, m.v);
  upload(w.o, m.o);
  upload(w.up, m.up);
  upload(w.down, m.down);
  if (m.gated) upload(w.gate, m.gate);
  SQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  m.staging.reset();
  m.loaded = true;
}

void DeviceBlockForward::forward(const Batch& batch, float* hidden, DeviceActivationHook* hook) {
  Impl& m = *impl_;
  SQ_CHECK(m.loaded, "DeviceBlockForward::forward before load");
  SQ_CHECK(batch.past == 0, "the CUDA block forward has no KV cache (past = {})", batch.past);
  const io::ModelConfig& c = config_;
  const i64 T = batch.tokens(), H = c.hidden_size, D = c.head_dim;
  const i64 qd = m.q.out, kvd = m.k.out, ka = m.attn_norm.width, km = m.mlp_norm.width,
            F = m.up.out;
  // The same consistency checks as model::block_forward.
  SQ_CHECK(qd == c.num_heads * D && kvd == c.num_kv_heads * D && m.v.out == kvd,
           "q/k/v widths {}/{}/{} do not fit {} heads, {} kv heads of {}", qd, kvd, m.v.out,
           c.num_heads, c.num_kv_heads, D);
  SQ_CHECK(m.q.in == ka && m.k.in == ka && m.v.in == ka && m.o.in == qd && m.o.out == H,
           "block linears do not chain (q/k/v read {}, attention norm {}, o {} x {})", m.q.in, ka,
           m.o.out, m.o.in);
  SQ_CHECK(ka == H && km == H, "norm widths {} / {} differ from the hidden size {}", ka, km, H);
  SQ_CHECK(m.up.in == km && m.down.in == F && m.down.out == H &&
               (!m.gated || (m.gate.out == F && m.gate.in == km)),
           "MLP linears do not chain (up {} x {}, down {} x {}, MLP norm {})", m.up.out, m.up.in,
           m.down.out, m.down.in, km);
  if (T == 0) return;
  const cudaStream_t s = stream_;

  reserve(m.hidden, T * H);
  reserve(m.xn, T * std::max(ka, km));
  reserve(m.qb, T * qd);
  reserve(m.kb, T * kvd);
  reserve(m.vb, T * kvd);
  reserve(m.attn, T * qd);
  reserve(m.out, T * H);
  reserve(m.upb, T * F);
  if (m.gated) {
    reserve(m.gateb, T * F);
    reserve(m.act, T * F);
  }
  if (m.type != GemmType::f32) reserve(m.x16, T * std::max({ka, km, qd, F}));

  auto run_hook = [&](Site site, float* x, i64 cols) {
    if (hook != nullptr) hook->at(site, x, T, cols, s);
  };
  // The GEMM input: the fp32 activation itself, or its 16-bit cast.
  auto gemm_input = [&](const float* x, i64 cols) -> const void* {
    switch (m.type) {
      case GemmType::bf16:
        cuda::to_bf16(x, T * cols, m.x16.data(), s);
        return m.x16.data();
      case GemmType::f16:
        cuda::to_f16(x, T * cols, m.x16.data(), s);
        return m.x16.data();
      case GemmType::f32:
        return x;
    }
    return x;
  };
  auto linear = [&](const DeviceLinear& l, const void* x, float* y) {
    switch (m.type) {
      case GemmType::bf16:
        cuda::linear_bf16(m.blas, static_cast<const std::uint16_t*>(x), T, l.in, l.w16.data(),
                          l.bias_or_null(), l.out, y, s);
        return;
      case GemmType::f16:
        cuda::linear_f16(m.blas, static_cast<const std::uint16_t*>(x), T, l.in, l.w16.data(),
                         l.bias_or_null(), l.out, y, s);
        return;
      case GemmType::f32:
        cuda::linear_f32(m.blas, static_cast<const float*>(x), T, l.in, l.w32.data(),
                         l.bias_or_null(), l.out, y, s);
        return;
    }
  };
  auto norm = [&](const DeviceNorm& n, const float* x, float* y) {
    const auto eps = static_cast<float>(c.norm_eps);
    switch (c.norm) {
      case io::NormKind::rms:
        cuda::rms_norm(x, T, H, n.weight.data(), eps, y, s);
        return;
      case io::NormKind::layer:
        cuda::layer_norm(x, T, H, n.weight.data(), n.bias.empty() ? nullptr : n.bias.data(), eps, y,
                         s);
        return;
    }
  };

  // Token t of every sequence sits at position t (no cache): one RoPE launch for all of them.
  // Uploaded before any kernel of this forward is queued (upload_vector waits for the stream).
  if (c.positions == io::PositionKind::rope &&
      (m.positions_for_len != batch.seq_len || m.positions_tokens != T)) {
    std::vector<i64> pos(static_cast<std::size_t>(T));
    for (i64 t = 0; t < T; ++t) pos[static_cast<std::size_t>(t)] = t % batch.seq_len;
    m.positions = upload_vector(pos, s);
    m.positions_for_len = batch.seq_len;
    m.positions_tokens = T;
  }
  SQ_CUDA_CHECK(cudaMemcpyAsync(m.hidden.data(), hidden,
                                static_cast<std::size_t>(T * H) * sizeof(float),
                                cudaMemcpyHostToDevice, s));

  // --- attention sub-block ---
  norm(m.attn_norm, m.hidden.data(), m.xn.data());
  run_hook(Site::qkv_in, m.xn.data(), ka);
  const void* x = gemm_input(m.xn.data(), ka);
  linear(m.q, x, m.qb.data());
  linear(m.k, x, m.kb.data());
  linear(m.v, x, m.vb.data());
  if (c.positions == io::PositionKind::rope) {
    cuda::rope_rotate_half(m.qb.data(), T, c.num_heads, D, qd, m.positions.data(),
                           m.inv_freq.data(), s);
    cuda::rope_rotate_half(m.kb.data(), T, c.num_kv_heads, D, kvd, m.positions.data(),
                           m.inv_freq.data(), s);
  }
  run_hook(Site::attn_q, m.qb.data(), qd);
  run_hook(Site::attn_k, m.kb.data(), kvd);
  run_hook(Site::attn_v, m.vb.data(), kvd);
  const cpu::AttentionShape shape = attention_shape(c, batch.seq_len, batch.seq_len, qd, kvd);
  cuda::attention(shape, batch.n_seq, m.qb.data(), m.kb.data(), m.vb.data(), m.attn.data(), s);
  run_hook(Site::o_in, m.attn.data(), qd);
  linear(m.o, gemm_input(m.attn.data(), qd), m.out.data());
  cuda::add(m.out.data(), T * H, m.hidden.data(), s);

  // --- MLP sub-block ---
  norm(m.mlp_norm, m.hidden.data(), m.xn.data());
  run_hook(Site::mlp_in, m.xn.data(), km);
  x = gemm_input(m.xn.data(), km);
  linear(m.up, x, m.upb.data());
  float* act = m.upb.data();
  switch (c.activation) {
    case io::Activation::silu:
      linear(m.gate, x, m.gateb.data());
      cuda::silu_mul(m.gateb.data(), m.upb.data(), T * F, m.act.data(), s);
      act = m.act.data();
      break;
    case io::Activation::relu:
      cuda::relu(act, T * F, s);
      break;
    case io::Activation::gelu_tanh:
      cuda::gelu_tanh(act, T * F, s);
      break;
  }
  run_hook(Site::down_in, act, F);
  linear(m.down, gemm_input(act, F), m.out.data());
  cuda::add(m.out.data(), T * H, m.hidden.data(), s);

  SQ_CUDA_CHECK(cudaMemcpyAsync(hidden, m.hidden.data(),
                                static_cast<std::size_t>(T * H) * sizeof(float),
                                cudaMemcpyDeviceToHost, s));
  cuda::synchronize(s);
}

DType DeviceBlockForward::gemm_dtype() const {
  switch (impl_->model_type) {
    case GemmType::bf16:
      return DType::bf16;
    case GemmType::f16:
      return DType::f16;
    case GemmType::f32:
      break;
  }
  return DType::f32;
}

std::int64_t DeviceBlockForward::device_bytes() const {
  const Impl& m = *impl_;
  i64 total = 0;
  for (const DeviceNorm* n : {&m.attn_norm, &m.mlp_norm})
    total += static_cast<i64>(n->weight.bytes() + n->bias.bytes());
  for (const DeviceLinear* l : {&m.q, &m.k, &m.v, &m.o, &m.gate, &m.up, &m.down})
    total += static_cast<i64>(l->w16.bytes() + l->w32.bytes() + l->bias.bytes());
  for (const DeviceBuffer<float>* b :
       {&m.hidden, &m.xn, &m.qb, &m.kb, &m.vb, &m.attn, &m.out, &m.upb, &m.gateb, &m.act})
    total += static_cast<i64>(b->bytes());
  total += static_cast<i64>(m.x16.bytes() + m.positions.bytes() + m.inv_freq.bytes());
  return total + static_cast<i64>(m.blas.workspace_bytes());
}

}  // namespace sq::model
