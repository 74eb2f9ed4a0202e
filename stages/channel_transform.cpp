// Folding a ChannelTransform into a decoder block. Every boundary uses the same two rules — the
// producer's rows (or a norm's slots) take the gather, 1/T, merge mean and affine; the consumers'
// columns take the sums and scales, their bias the shift — and differs only in what it refuses.
#include "stages/channel_transform.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>

#include "core/error.h"
#include "core/tensor.h"

namespace sq::stages {

using i64 = std::int64_t;

namespace {

i64 ssize_of(const auto& v) { return static_cast<i64>(v.size()); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// ChannelTransform

i64 ChannelTransform::slots() const { return index.empty() ? in_channels : ssize_of(index); }

i64 ChannelTransform::out_channels() const {
  if (merge.empty()) return slots();
  return std::max<i64>(0, *std::max_element(merge.begin(), merge.end()) + 1);
}

ChannelTransform ChannelTransform::identity(i64 channels) {
  ChannelTransform t;
  t.in_channels = channels;
  return t;
}

ChannelTransform ChannelTransform::scaling(std::vector<float> scale_) {
  ChannelTransform t;
  t.in_channels = ssize_of(scale_);
  t.scale = std::move(scale_);
  return t;
}

ChannelTransform ChannelTransform::shifting(std::vector<float> shift_, std::vector<float> scale_) {
  ChannelTransform t;
  t.in_channels = ssize_of(shift_);
  t.shift = std::move(shift_);
  t.scale = std::move(scale_);
  return t;
}

ChannelTransform ChannelTransform::permutation(std::vector<std::int64_t> order) {
  ChannelTransform t;
  t.in_channels = ssize_of(order);
  t.index = std::move(order);
  return t;
}

bool ChannelTransform::is_diagonal() const { return index.empty() && merge.empty(); }

void ChannelTransform::validate() const {
  if (in_channels <= 0) fail("channel transform: in_channels is {}, must be positive", in_channels);
  std::vector<bool> used(static_cast<std::size_t>(in_channels), index.empty());
  for (i64 k = 0; k < ssize_of(index); ++k) {
    if (index[k] < 0 || index[k] >= in_channels)
      fail("channel transform: index[{}] = {} is outside [0, {})", k, index[k], in_channels);
    used[index[k]] = true;
  }
  for (i64 j = 0; j < in_channels; ++j)
    if (!used[j])
      fail(
          "channel transform: input channel {} is read by no slot (the index must use every "
          "channel; dropping one is not an equivalent transformation)",
          j);
  const i64 n_slots = slots();
  if (!merge.empty()) {
    if (ssize_of(merge) != n_slots)
      fail("channel transform: merge has {} entries for {} slots", merge.size(), n_slots);
    for (i64 k = 0; k < n_slots; ++k)
      if (merge[k] < 0 || merge[k] >= n_slots)  // covering 0..out-1 needs out <= slots
        fail("channel transform: merge[{}] = {} is outside [0, {})", k, merge[k], n_slots);
    std::vector<bool> hit(static_cast<std::size_t>(out_channels()), false);
    for (i64 m : merge) hit[m] = true;
    for (i64 i = 0; i < ssize_of(hit); ++i)
      if (!hit[i])
        fail("channel transform: output channel {} receives no slot (merge must cover 0..{})", i,
             ssize_of(hit) - 1);
  }
  const i64 n_out = out_channels();
  if (!scale.empty() && ssize_of(scale) != n_out)
    fail("channel transform: scale has {} entries for {} output channels", scale.size(), n_out);
  if (!shift.empty() && ssize_of(shift) != n_out)
    fail("channel transform: shift has {} entries for {} output channels", shift.size(), n_out);
  for (i64 i = 0; i < ssize_of(scale); ++i)
    if (!std::isfinite(scale[i]) || scale[i] == 0.0f)
      fail("channel transform: scale[{}] = {} is not a nonzero finite number", i, scale[i]);
  for (i64 i = 0; i < ssize_of(shift); ++i)
    if (!std::isfinite(shift[i]))
      fail("channel transform: shift[{}] = {} is not finite", i, shift[i]);
}

namespace {

// A validated transform with every map spelled out, plus the counts the rules need.
struct Resolved {
  i64 in = 0, slots = 0, out = 0;
  std::vector<i64> index, merge;          // per slot
  std::vector<double> scale, shift;       // per output channel
  std::vector<i64> copies;                // T(j) per input channel
  std::vector<std::vector<i64>> members;  // slots merged into each output channel
  bool has_shift = false;

  bool splits() const {
    return std::any_of(copies.begin(), copies.end(), [](i64 n) { return n > 1; });
  }
  bool merges() const {
    return std::any_of(members.begin(), members.end(), [](const auto& m) { return m.size() > 1; });
  }
};

Resolved resolve(const ChannelTransform& t) {
  Resolved r;
  r.in = t.in_channels;
  r.slots = t.slots();
  r.out = t.out_channels();
  r.index = t.index;
  if (r.index.empty()) {
    r.index.resize(static_cast<std::size_t>(r.in));
    std::iota(r.index.begin(), r.index.end(), i64{0});
  }
  r.merge = t.merge;
  if (r.merge.empty()) {
    r.merge.resize(static_cast<std::size_t>(r.slots));
    std::iota(r.merge.begin(), r.merge.end(), i64{0});
  }
  r.scale.assign(static_cast<std::size_t>(r.out), 1.0);
  r.shift.assign(static_cast<std::size_t>(r.out), 0.0);
  for (i64 i = 0; i < ssize_of(t.scale); ++i) r.scale[i] = t.scale[i];
  for (i64 i = 0; i < ssize_of(t.shift); ++i) r.shift[i] = t.shift[i];
  r.has_shift = std::any_of(t.shift.begin(), t.shift.end(), [](float z) { return z != 0.0f; });
  r.copies.assign(static_cast<std::size_t>(r.in), 0);
  r.members.resize(static_cast<std::size_t>(r.out));
  for (i64 k = 0; k < r.slots; ++k) {
    ++r.copies[r.index[k]];
    r.members[r.merge[k]].push_back(k);
  }
  return r;
}

}  // namespace

void ChannelTransform::apply(const float* x, i64 rows, float* out) const {
  validate();
  const Resolved r = resolve(*this);
  std::vector<double> acc(static_cast<std::size_t>(r.out));
  for (i64 row = 0; row < rows; ++row) {
    const float* xr = x + row * r.in;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (i64 k = 0; k < r.slots; ++k)
      acc[r.merge[k]] += double(xr[r.index[k]]) / double(r.copies[r.index[k]]);
    for (i64 i = 0; i < r.out; ++i) {
      const double m = acc[i] / double(r.members[i].size());
      out[row * r.out + i] = static_cast<float>((m - r.shift[i]) / r.scale[i]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Folding

std::string_view boundary_name(Boundary boundary) {
  switch (boundary) {
    case Boundary::attn_norm_to_qkv:
      return "attn_norm_to_qkv";
    case Boundary::mlp_norm_to_mlp:
      return "mlp_norm_to_mlp";
    case Boundary::v_to_o:
      return "v_to_o";
    case Boundary::up_to_down:
      return "up_to_down";
  }
  return "?";
}

Boundary boundary_from_name(std::string_view name) {
  for (Boundary b : {Boundary::attn_norm_to_qkv, Boundary::mlp_norm_to_mlp, Boundary::v_to_o,
                     Boundary::up_to_down})
    if (boundary_name(b) == name) return b;
  fail("'{}' is not a transform boundary", name);
}

namespace {

template <typename... Args>
[[noreturn]] void refuse(Boundary b, fmt::format_string<Args...> format, Args&&... args) {
  fail("cannot fold a channel transform at {}: {}", boundary_name(b),
       fmt::format(format, std::forward<Args>(args)...));
}

std::vector<float> values_or_zeros(const Tensor& t, i64 n) {
  if (!t.defined()) return std::vector<float>(static_cast<std::size_t>(n), 0.0f);
  const auto v = t.values<float>();
  return {v.begin(), v.end()};
}

// Consumer rule (the same at every boundary): with x = P(D x' + z), W'[:, i] = s_i * sum over the
// slots k merged into i of W[:, index[k]], and b' = b + sum_i z_i * (that column sum). A bias is
// created only when a shift needs one.
model::Linear fold_consumer(const model::Linear& l, const Resolved& r) {
  const i64 rows = l.out_features(), cols = l.in_features();
  SQ_CHECK(cols == r.in, "consumer of width {} for a transform of {} channels", cols, r.in);
  const float* w = l.weight.data<float>();
  const float* b = l.bias_or_null();
  const bool with_bias = b != nullptr || r.has_shift;
  std::vector<float> nw(static_cast<std::size_t>(rows * r.out));
  std::vector<float> nb(with_bias ? static_cast<std::size_t>(rows) : 0);
  std::vector<double> acc(static_cast<std::size_t>(r.out));
  for (i64 row = 0; row < rows; ++row) {
    const float* wr = w + row * cols;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (i64 k = 0; k < r.slots; ++k) acc[r.merge[k]] += wr[r.index[k]];
    double bias = b != nullptr ? b[row] : 0.0;
    for (i64 i = 0; i < r.out; ++i) {
      nw[row * r.out + i] = static_cast<float>(r.scale[i] * acc[i]);
      bias += r.shift[i] * acc[i];
    }
    if (with_bias) nb[row] = static_cast<float>(bias);
  }
  model::Linear out;
  out.weight = Tensor::from_f32(nw, {rows, r.out});
  if (with_bias) out.bias = Tensor::from_f32(nb, {rows});
  return out;
}

// Producer rule for a linear whose output rows are the transform's input: slot k's row is
// W[index[k]] (divided by T when `divide`), the slots merged into one output channel are
// averaged, then (row - shift) / scale when `affine`. SwiGLU's gate takes the gather alone.
model::Linear fold_producer(const model::Linear& l, const Resolved& r, bool divide, bool affine) {
  const i64 rows = l.out_features(), cols = l.in_features();
  SQ_CHECK(rows == r.in, "producer of {} rows for a transform of {} channels", rows, r.in);
  const float* w = l.weight.data<float>();
  const float* b = l.bias_or_null();
  const bool with_bias = b != nullptr || (affine && r.has_shift);
  std::vector<float> nw(static_cast<std::size_t>(r.out * cols));
  std::vector<float> nb(with_bias ? static_cast<std::size_t>(r.out) : 0);
  std::vector<double> acc(static_cast<std::size_t>(cols));
  for (i64 i = 0; i < r.out; ++i) {
    std::fill(acc.begin(), acc.end(), 0.0);
    double bias = 0.0;
    for (i64 k : r.members[i]) {
      const i64 j = r.index[k];
      const double f = divide ? 1.0 / double(r.copies[j]) : 1.0;
      for (i64 col = 0; col < cols; ++col) acc[col] += f * w[j * cols + col];
      if (b != nullptr) bias += f * b[j];
    }
    const double n = double(r.members[i].size());
    const double s = affine ? r.scale[i] : 1.0, z = affine ? r.shift[i] : 0.0;
    for (i64 col = 0; col < cols; ++col) nw[i * cols + col] = static_cast<float>(acc[col] / n / s);
    if (with_bias) nb[i] = static_cast<float>((bias / n - z) / s);
  }
  model::Linear out;
  out.weight = Tensor::from_f32(nw, {r.out, cols});
  if (with_bias) out.bias = Tensor::from_f32(nb, {r.out});
  return out;
}

// Producer rule for a norm. The norm as it stands is a map (identity when it has none): slot k
// computes w1_k * xhat[idx1_k] + b1_k and output channel c is the mean of its slots. Composing the
// transform gives one slot per pair (new slot l, old slot k of channel index[l]); output channel
// i is the mean of its P_i pairs when each pair is scaled by P_i / (N_i * N1_j * T_j), which is
// exact for any maps. Scale and shift then fold into each slot's weight and bias. A result that
// is the identity map again is stored as a plain norm (diagonal transforms never create a map).
model::Norm fold_into_norm(const io::ModelConfig& c, const model::Norm& n, const Resolved& r,
                           Boundary b) {
  if (r.has_shift) {
    switch (c.norm) {
      case io::NormKind::rms:
        refuse(b,
               "a shift needs a bias to absorb it and an RMSNorm has none (shift only where a "
               "bias can absorb it)");
      case io::NormKind::layer:
        break;
    }
  }
  const i64 old_slots = n.weight.numel();
  std::vector<i64> idx1 = n.map.index, merge1 = n.map.merge;
  i64 out1 = n.map.out_channels;
  if (n.map.empty()) {
    idx1.resize(static_cast<std::size_t>(old_slots));
    std::iota(idx1.begin(), idx1.end(), i64{0});
    merge1 = idx1;
    out1 = old_slots;
  }
  SQ_CHECK(out1 == r.in && ssize_of(idx1) == old_slots, "norm of width {} ({} slots) vs {}", out1,
           old_slots, r.in);
  const std::vector<float> w1 = values_or_zeros(n.weight, old_slots);
  const std::vector<float> b1 = values_or_zeros(n.bias, old_slots);
  std::vector<std::vector<i64>> members1(static_cast<std::size_t>(out1));
  for (i64 k = 0; k < old_slots; ++k) members1[merge1[k]].push_back(k);
  std::vector<double> pairs(static_cast<std::size_t>(r.out), 0.0);
  for (i64 l = 0; l < r.slots; ++l) pairs[r.merge[l]] += double(members1[r.index[l]].size());

  model::Norm out;
  std::vector<i64> idx2, merge2;
  std::vector<float> w2, b2;
  for (i64 l = 0; l < r.slots; ++l) {
    const i64 j = r.index[l], i = r.merge[l];
    const double factor =
        pairs[i] / (double(r.members[i].size()) * double(members1[j].size()) * double(r.copies[j]));
    for (i64 k : members1[j]) {
      idx2.push_back(idx1[k]);
      merge2.push_back(i);
      w2.push_back(static_cast<float>(w1[k] * factor / r.scale[i]));
      b2.push_back(static_cast<float>((b1[k] * factor - r.shift[i]) / r.scale[i]));
    }
  }
  const i64 new_slots = ssize_of(idx2);
  bool identity = new_slots == r.out && new_slots == c.hidden_size;
  for (i64 k = 0; identity && k < new_slots; ++k) identity = idx2[k] == k && merge2[k] == k;
  out.weight = Tensor::from_f32(w2, {new_slots});
  if (n.bias.defined() || r.has_shift) out.bias = Tensor::from_f32(b2, {new_slots});
  if (!identity) out.map = {std::move(idx2), std::move(merge2), r.out};
  return out;
}

void check_width(Boundary b, std::string_view what, i64 width, const Resolved& r) {
  if (width != r.in)
    refuse(b, "the transform has {} input channels but {} has {}", r.in, what, width);
}

void fold_norm_boundary(const io::ModelConfig& c, model::BlockWeights& w, Boundary b,
                        const Resolved& r) {
  const bool attn = b == Boundary::attn_norm_to_qkv;
  model::Norm& norm = w.norm(attn ? model::NormRole::attn : model::NormRole::mlp);
  check_width(b, "the norm's output", norm.out_features(), r);
  std::vector<model::LinearRole> consumers;
  if (attn) {
    consumers = {model::LinearRole::q, model::LinearRole::k, model::LinearRole::v};
  } else if (c.gated_mlp()) {
    consumers = {model::LinearRole::gate, model::LinearRole::up};
  } else {
    consumers = {model::LinearRole::up};
  }
  for (auto role : consumers)
    check_width(b, model::role_name(role), w.linear(role).in_features(), r);
  norm = fold_into_norm(c, norm, r, b);
  for (auto role : consumers) w.linear(role) = fold_consumer(w.linear(role), r);
}

// Attention output channel (q head h, dim d) reads v channel (kv head h / group, dim d), and
// softmax rows sum to 1, so per-channel scale and shift on v pass through attention unchanged;
// o's columns take them for every q head of the group. Splits and merges would change head_dim,
// and moving a channel to another head would mix heads.
void fold_v_to_o(const io::ModelConfig& c, model::BlockWeights& w, Boundary b, const Resolved& r) {
  check_width(b, "v", w.v.out_features(), r);
  const i64 D = c.head_dim, heads = c.num_heads, group = c.num_heads / c.num_kv_heads;
  SQ_CHECK(w.o.in_features() == heads * D, "o {} for {} heads of {}", w.o.weight.describe(), heads,
           D);
  for (i64 j = 0; j < r.in; ++j)
    if (r.copies[j] > 1)
      refuse(b, "v channel {} is split into {} copies; a split would change head_dim", j,
             r.copies[j]);
  for (i64 i = 0; i < r.out; ++i)
    if (r.members[i].size() > 1)
      refuse(b, "{} channels are merged into channel {}; a merge would change head_dim",
             r.members[i].size(), i);
  // Now a bijection: output channel i reads input channel src[i].
  std::vector<i64> src(static_cast<std::size_t>(r.out));
  for (i64 k = 0; k < r.slots; ++k) src[r.merge[k]] = r.index[k];
  for (i64 i = 0; i < r.out; ++i)
    if (src[i] / D != i / D)
      refuse(b,
             "the permutation moves v channel {} (kv head {}) to channel {} (kv head {}); only "
             "permutations within a head keep attention intact",
             src[i], src[i] / D, i, i / D);

  Resolved q;  // the same transform expanded to o's input, one copy per q head of the group
  q.in = q.slots = q.out = heads * D;
  q.index.resize(static_cast<std::size_t>(q.in));
  q.merge.resize(static_cast<std::size_t>(q.in));
  std::iota(q.merge.begin(), q.merge.end(), i64{0});
  q.scale.resize(static_cast<std::size_t>(q.in));
  q.shift.resize(static_cast<std::size_t>(q.in));
  q.has_shift = r.has_shift;
  for (i64 h = 0; h < heads; ++h) {
    const i64 g = h / group;
    for (i64 d = 0; d < D; ++d) {
      const i64 i = g * D + d, qi = h * D + d;
      q.index[qi] = h * D + (src[i] - g * D);
      q.scale[qi] = r.scale[i];
      q.shift[qi] = r.shift[i];
    }
  }
  w.v = fold_producer(w.v, r, /*divide=*/true, /*affine=*/true);
  w.o = fold_consumer(w.o, q);
}

void fold_up_to_down(const io::ModelConfig& c, model::BlockWeights& w, Boundary b,
                     const Resolved& r) {
  check_width(b, "up", w.up.out_features(), r);
  check_width(b, "down's input", w.down.in_features(), r);
  if (r.has_shift)
    refuse(b,
           "a shift cannot fold into the MLP activation's output (act(u) - z is not the "
           "activation of any linear output; shift only where a bias can absorb it)");
  switch (c.activation) {
    case io::Activation::silu:
      if (r.merges())
        refuse(b,
               "a merge cannot fold into SwiGLU: silu(g_a) u_a + silu(g_b) u_b is not a "
               "function of the mean");
      check_width(b, "gate", w.gate.out_features(), r);
      // silu(gate) multiplies up, so up alone takes 1/T and the scale; gate rows just follow.
      w.up = fold_producer(w.up, r, /*divide=*/true, /*affine=*/true);
      w.gate = fold_producer(w.gate, r, /*divide=*/false, /*affine=*/false);
      break;
    case io::Activation::relu:
      for (i64 i = 0; i < r.out; ++i)
        if (r.scale[i] < 0.0)
          refuse(b, "scale[{}] = {} is negative; relu(x / s) = relu(x) / s only for s > 0", i,
                 r.scale[i]);
      w.up = fold_producer(w.up, r, /*divide=*/true, /*affine=*/true);
      break;
    case io::Activation::gelu_tanh:
      // gelu(x / s) is not gelu(x) / s: only a pure permutation passes through.
      if (r.splits() || r.merges() ||
          std::any_of(r.scale.begin(), r.scale.end(), [](double s) { return s != 1.0; }))
        refuse(b, "only a permutation passes through GELU (no scale, split or merge)");
      w.up = fold_producer(w.up, r, /*divide=*/true, /*affine=*/true);
      break;
  }
  w.down = fold_consumer(w.down, r);
}

}  // namespace

void apply_transform(const io::ModelConfig& config, model::BlockWeights& w, Boundary boundary,
                     const ChannelTransform& t) {
  try {
    t.validate();
  } catch (const Error& e) {
    refuse(boundary, "{}", e.message());
  }
  const Resolved r = resolve(t);
  // Work on a copy (tensors are shared handles; every changed one is a new tensor) so that a
  // refusal leaves `w` as it was.
  model::BlockWeights out = w;
  switch (boundary) {
    case Boundary::attn_norm_to_qkv:
    case Boundary::mlp_norm_to_mlp:
      fold_norm_boundary(config, out, boundary, r);
      break;
    case Boundary::v_to_o:
      fold_v_to_o(config, out, boundary, r);
      break;
    case Boundary::up_to_down:
      fold_up_to_down(config, out, boundary, r);
      break;
  }
  w = std::move(out);
}

}  // namespace sq::stages
