// ChannelTransform: its reference semantics on a hand example and its validation; folding at every
// boundary of LLaMA (RMSNorm, RoPE, GQA, SwiGLU) and OPT (LayerNorm, biases, ReLU) blocks, where
// scale, shift, permutation, split and their compositions leave the FP block output unchanged,
// merges change the consumer output by exactly the predicted amount, and every refusal refuses.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/random.h"
#include "kernels/cpu/ops.h"
#include "model/forward.h"
#include "model/synth.h"
#include "model/weights.h"
#include "stages/channel_transform.h"

namespace sq {
namespace {
namespace fs = std::filesystem;
using i64 = std::int64_t;
using stages::Boundary;
using stages::ChannelTransform;

constexpr double kTolerance = 1e-5;  // DESIGN §3: ||dy|| / ||y|| in fp32
constexpr std::array kBoundaries = {Boundary::attn_norm_to_qkv, Boundary::mlp_norm_to_mlp,
                                    Boundary::v_to_o, Boundary::up_to_down};
constexpr i64 kSeqs = 2, kTokens = 16;

// ---------------------------------------------------------------------------------------------
// A small synthetic model per architecture, its blocks and a fixed random input.

struct ArchModel {
  io::Arch arch = io::Arch::llama;
  io::ModelConfig config;
  std::vector<model::BlockWeights> blocks;
  std::vector<float> inv_freq;
  std::vector<float> input;  // [kSeqs * kTokens, hidden]
};

const ArchModel& setup(io::Arch arch) {
  static std::map<io::Arch, ArchModel> cache;
  if (auto it = cache.find(arch); it != cache.end()) return it->second;
  model::SynthSpec spec;
  spec.arch = arch;
  spec.hidden = 64;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = arch == io::Arch::llama ? 2 : 4;
  spec.vocab = 128;
  spec.max_positions = 64;
  spec.dtype = DType::f32;
  spec.calib_seqs = spec.eval_seqs = 0;
  spec.seed = 5;
  // ctest runs each test as its own process, in parallel: one directory per process.
  const fs::path dir = fs::path(SQ_TEST_TMP_DIR) / "stages" /
                       ("ct_" + io::arch_name(arch) + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir.parent_path());
  model::write_synth_model(spec, dir.string());
  const auto m = model::Model::open(dir.string());
  ArchModel s;
  s.arch = arch;
  s.config = m.config();
  for (int l = 0; l < m.num_layers(); ++l) {
    model::BlockWeights w = m.load_block(l);
    for (auto role : model::kAllLinearRoles)  // own copies, so the files can go
      if (w.linear(role).weight.defined()) {
        w.linear(role).weight = w.linear(role).weight.clone();
        if (w.linear(role).bias.defined()) w.linear(role).bias = w.linear(role).bias.clone();
      }
    for (model::Norm* n : {&w.attn_norm, &w.mlp_norm}) {
      n->weight = n->weight.clone();
      if (n->bias.defined()) n->bias = n->bias.clone();
    }
    s.blocks.push_back(std::move(w));
  }
  s.inv_freq = model::rope_inv_freq(s.config);
  fs::remove_all(dir);
  Rng rng(99);
  s.input.resize(static_cast<std::size_t>(kSeqs * kTokens * s.config.hidden_size));
  for (auto& v : s.input) v = static_cast<float>(rng.normal());
  return cache.emplace(arch, std::move(s)).first->second;
}

// Copies one site's activation matrix out of a forward pass.
class Capture : public model::ActivationHook {
 public:
  explicit Capture(model::Site site) : site_(site) {}
  void at(model::Site site, float* x, i64 rows, i64 n_cols) override {
    if (site != site_) return;
    values.assign(x, x + rows * n_cols);
    cols = n_cols;
  }
  std::vector<float> values;
  i64 cols = 0;

 private:
  model::Site site_;
};

// Block output for the fixed input; with `capture`, also the activation at its site.
std::vector<float> run(const ArchModel& s, const model::BlockWeights& w,
                       Capture* capture = nullptr) {
  Tensor h = Tensor::from_f32(s.input, {kSeqs * kTokens, s.config.hidden_size});
  model::block_forward(s.config, w, {.n_seq = kSeqs, .seq_len = kTokens}, h,
                       {.inv_freq = s.inv_freq, .hook = capture});
  const auto v = h.values<float>();
  return {v.begin(), v.end()};
}

double sum_squares(const std::vector<float>& a) {
  double s = 0.0;
  for (float v : a) s += double(v) * v;
  return s;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

model::Site producer_site(Boundary b) {
  switch (b) {
    case Boundary::attn_norm_to_qkv:
      return model::Site::qkv_in;
    case Boundary::mlp_norm_to_mlp:
      return model::Site::mlp_in;
    case Boundary::v_to_o:
      return model::Site::attn_v;
    case Boundary::up_to_down:
      return model::Site::down_in;
  }
  return model::Site::qkv_in;
}

i64 width(const model::BlockWeights& w, Boundary b) {
  switch (b) {
    case Boundary::attn_norm_to_qkv:
      return w.attn_norm.out_features();
    case Boundary::mlp_norm_to_mlp:
      return w.mlp_norm.out_features();
    case Boundary::v_to_o:
      return w.v.out_features();
    case Boundary::up_to_down:
      return w.up.out_features();
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Random transforms

std::vector<float> random_scales(Rng& rng, i64 n, bool signs) {
  std::vector<float> s(static_cast<std::size_t>(n));
  for (auto& v : s) {
    v = static_cast<float>(std::exp((2.0 * rng.uniform() - 1.0) * std::log(16.0)));
    if (signs && rng.uniform() < 0.5) v = -v;
  }
  return s;
}

void shuffle(Rng& rng, std::vector<i64>& v) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

std::vector<i64> random_permutation(Rng& rng, i64 n) {
  std::vector<i64> p(static_cast<std::size_t>(n));
  for (i64 i = 0; i < n; ++i) p[i] = i;
  shuffle(rng, p);
  return p;
}

// A permutation that keeps every channel inside its block of `d` (a head).
std::vector<i64> head_permutation(Rng& rng, i64 n, i64 d) {
  std::vector<i64> p;
  for (i64 h = 0; h < n / d; ++h) {
    std::vector<i64> head(static_cast<std::size_t>(d));
    for (i64 i = 0; i < d; ++i) head[i] = h * d + i;
    shuffle(rng, head);
    p.insert(p.end(), head.begin(), head.end());
  }
  return p;
}

// About 10% of the channels split into 2 or 3 copies, all slots in a random order.
std::vector<i64> random_split(Rng& rng, i64 n) {
  std::vector<i64> copies(static_cast<std::size_t>(n), 1);
  const i64 chosen = std::max<i64>(1, (n + 5) / 10);
  for (i64 c = 0; c < chosen; ++c) {
    i64 j = static_cast<i64>(rng.below(n));
    while (copies[j] > 1) j = (j + 1) % n;
    copies[j] = 2 + static_cast<i64>(rng.below(2));
  }
  std::vector<i64> index;
  for (i64 j = 0; j < n; ++j) index.insert(index.end(), copies[j], j);
  shuffle(rng, index);
  return index;
}

// OS+ shifts, z_j = (max_j + min_j) / 2 of the producer output, jittered so they are not exactly
// the channel centres; then as many channels as the transform outputs.
std::vector<float> random_shifts(Rng& rng, const ArchModel& s, const model::BlockWeights& w,
                                 Boundary b) {
  Capture cap(producer_site(b));
  run(s, w, &cap);
  const i64 n = cap.cols, rows = static_cast<i64>(cap.values.size()) / n;
  std::vector<float> z(static_cast<std::size_t>(n));
  for (i64 j = 0; j < n; ++j) {
    float lo = std::numeric_limits<float>::max(), hi = -lo;
    for (i64 r = 0; r < rows; ++r) {
      lo = std::min(lo, cap.values[r * n + j]);
      hi = std::max(hi, cap.values[r * n + j]);
    }
    const double centre = (double(lo) + hi) / 2, range = double(hi) - lo;
    z[j] = static_cast<float>(centre * (0.5 + rng.uniform()) + 0.1 * range * rng.normal());
  }
  return z;
}

// What may be done at a boundary of an architecture.
struct Allowed {
  bool negative_scale = true, shift = false, split = true, any_permutation = true;
};
Allowed allowed(const io::ModelConfig& c, Boundary b) {
  Allowed a;
  switch (b) {
    case Boundary::attn_norm_to_qkv:
    case Boundary::mlp_norm_to_mlp:
      a.shift = c.norm == io::NormKind::layer;
      break;
    case Boundary::v_to_o:
      a.shift = true;
      a.split = false;
      a.any_permutation = false;
      break;
    case Boundary::up_to_down:
      a.negative_scale = c.activation != io::Activation::relu;
      break;
  }
  return a;
}

// One test case: a sequence of transforms built against the block as it is when each is folded.
using Step = std::function<ChannelTransform(Rng&, const model::BlockWeights&)>;
struct Case {
  std::string name;
  std::vector<Step> steps;
};

std::vector<Case> cases(const ArchModel& s, Boundary b) {
  const Allowed a = allowed(s.config, b);
  const i64 d = s.config.head_dim;
  auto scale = [=](Rng& rng, const model::BlockWeights& w) {
    return ChannelTransform::scaling(random_scales(rng, width(w, b), a.negative_scale));
  };
  auto shift = [=, &s](Rng& rng, const model::BlockWeights& w) {
    return ChannelTransform::shifting(random_shifts(rng, s, w, b),
                                      random_scales(rng, width(w, b), a.negative_scale));
  };
  auto permute = [=](Rng& rng, const model::BlockWeights& w) {
    const i64 n = width(w, b);
    return ChannelTransform::permutation(a.any_permutation ? random_permutation(rng, n)
                                                           : head_permutation(rng, n, d));
  };
  auto split = [=](Rng& rng, const model::BlockWeights& w) {
    ChannelTransform t;
    t.in_channels = width(w, b);
    t.index = random_split(rng, t.in_channels);
    return t;
  };
  // Everything at once in one transform: gather (split or permutation), scale, shift.
  auto all = [=, &s](Rng& rng, const model::BlockWeights& w) {
    ChannelTransform t;
    t.in_channels = width(w, b);
    t.index = a.split ? random_split(rng, t.in_channels) : head_permutation(rng, t.in_channels, d);
    t.scale = random_scales(rng, t.slots(), a.negative_scale);
    if (a.shift) {
      // Shifts are per output channel: gather the producer's channel shifts through the index.
      const auto z = random_shifts(rng, s, w, b);
      std::vector<float> copies(z.size(), 0.0f);
      for (i64 j : t.index) copies[j] += 1.0f;
      for (i64 j : t.index) t.shift.push_back(z[j] / copies[j]);
    }
    return t;
  };
  // A permutation written as a bijective merge map (one slot per output channel).
  auto merge_permute = [=](Rng& rng, const model::BlockWeights& w) {
    const i64 n = width(w, b);
    ChannelTransform t;
    t.in_channels = n;
    t.merge = a.any_permutation ? random_permutation(rng, n) : head_permutation(rng, n, d);
    return t;
  };
  const std::string z = a.shift ? "+shift" : "";
  std::vector<Case> out = {
      {"scale", {scale}}, {"permutation", {permute}}, {"merge-map permutation", {merge_permute}}};
  if (a.shift) out.push_back({"shift+scale", {shift}});
  if (a.split) out.push_back({"split", {split}});
  out.push_back({(a.split ? "split+perm+scale" : "perm+scale") + z, {all}});
  const Step shift_or_scale = a.shift ? Step(shift) : Step(scale);
  if (a.split) {
    out.push_back({"split;perm;scale" + z + ";split", {split, permute, shift_or_scale, split}});
  } else {
    out.push_back({"perm;scale" + z + ";scale;perm", {permute, shift_or_scale, scale, permute}});
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reference semantics and validation

TEST(ChannelTransform, ApplyMatchesTheDefinitionOnAHandExample) {
  ChannelTransform t;
  t.in_channels = 3;
  t.index = {2, 0, 0, 1};  // channel 0 split in two (T = 2)
  t.merge = {0, 1, 2, 1};  // one copy of channel 0 averaged with channel 1
  t.scale = {2.0f, -1.0f, 4.0f};
  t.shift = {1.0f, 0.5f, -2.0f};
  EXPECT_EQ(t.slots(), 4);
  EXPECT_EQ(t.out_channels(), 3);
  EXPECT_FALSE(t.is_diagonal());
  const std::vector<float> x = {1, 2, 3, 4, -2, 6};
  // Row 0: g = {3, 0.5, 0.5, 2}; m = {3, (0.5 + 2) / 2, 0.5}; x' = {(3-1)/2, (1.25-0.5)/-1,
  // (0.5+2)/4}. Row 1: g = {6, 2, 2, -2}; m = {6, 0, 2}; x' = {2.5, 0.5, 1}.
  const std::vector<float> expected = {1.0f, -0.75f, 0.625f, 2.5f, 0.5f, 1.0f};
  std::vector<float> out(6);
  t.apply(x.data(), 2, out.data());
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_FLOAT_EQ(out[i], expected[i]) << i;

  // Factories and identities.
  const auto id = ChannelTransform::identity(3);
  EXPECT_TRUE(id.is_diagonal());
  id.apply(x.data(), 2, out.data());
  EXPECT_EQ(out, x);
  const auto p = ChannelTransform::permutation({2, 0, 1});
  p.apply(x.data(), 2, out.data());
  EXPECT_EQ(out, (std::vector<float>{3, 1, 2, 6, 4, -2}));
  const auto sh = ChannelTransform::shifting({1, 2, 3}, {});
  EXPECT_TRUE(sh.is_diagonal());
  sh.apply(x.data(), 2, out.data());
  EXPECT_EQ(out, (std::vector<float>{0, 0, 0, 3, -4, 3}));
  const auto sc = ChannelTransform::scaling({2, 4, -1});
  sc.apply(x.data(), 2, out.data());
  EXPECT_EQ(out, (std::vector<float>{0.5f, 0.5f, -3, 2, -0.5f, -6}));
}

TEST(ChannelTransform, ValidateRefusesBadTransforms) {
  auto refused = [](const ChannelTransform& t, const std::string& what) {
    try {
      t.validate();
      ADD_FAILURE() << "accepted; expected: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  ChannelTransform t;
  refused(t, "in_channels is 0");
  t = ChannelTransform::permutation({0, 3, 1});
  refused(t, "index[1] = 3 is outside [0, 3)");
  t = ChannelTransform::permutation({0, 0, 1});
  refused(t, "input channel 2 is read by no slot");
  t = ChannelTransform::identity(3);
  t.merge = {0, 1};
  refused(t, "merge has 2 entries for 3 slots");
  t.merge = {0, 2, 2};
  refused(t, "output channel 1 receives no slot");
  t.merge = {0, -1, 1};
  refused(t, "merge[1] = -1 is outside");
  t = ChannelTransform::scaling({1.0f, 2.0f});
  t.in_channels = 3;
  refused(t, "scale has 2 entries for 3 output channels");
  t = ChannelTransform::scaling({1.0f, 0.0f, 2.0f});
  refused(t, "scale[1] = 0 is not a nonzero finite number");
  t = ChannelTransform::scaling({1.0f, std::nanf(""), 2.0f});
  refused(t, "scale[1] = nan");
  t = ChannelTransform::shifting({0.0f, 1.0f}, {});
  t.in_channels = 3;
  refused(t, "shift has 2 entries");
  t = ChannelTransform::shifting({0.0f, std::numeric_limits<float>::infinity()}, {});
  refused(t, "shift[1] = inf is not finite");
  EXPECT_NO_THROW(ChannelTransform::identity(3).validate());
}

// ---------------------------------------------------------------------------------------------
// Equivalence at every boundary

// Max relative error per (arch, boundary), for the report at the end of each test.
void check_equivalence(io::Arch arch) {
  const ArchModel& s = setup(arch);
  Rng rng(1234 + static_cast<int>(arch));
  for (Boundary b : kBoundaries) {
    double max_block = 0.0, max_producer = 0.0;
    for (const auto& c : cases(s, b)) {
      for (std::size_t layer = 0; layer < s.blocks.size(); ++layer) {
        const model::BlockWeights& original = s.blocks[layer];
        Capture before(producer_site(b));
        const auto y = run(s, original, &before);
        model::BlockWeights w = original;
        std::vector<float> expected = before.values;  // the producer output, transformed
        for (const auto& step : c.steps) {
          const ChannelTransform t = step(rng, w);
          const i64 rows = static_cast<i64>(expected.size()) / t.in_channels;
          std::vector<float> next(static_cast<std::size_t>(rows * t.out_channels()));
          t.apply(expected.data(), rows, next.data());
          expected = std::move(next);
          stages::apply_transform(s.config, w, b, t);
        }
        Capture after(producer_site(b));
        const auto y2 = run(s, w, &after);
        const double e_block = rel_err(y2, y), e_producer = rel_err(after.values, expected);
        EXPECT_LE(e_block, kTolerance) << io::arch_name(arch) << " " << stages::boundary_name(b)
                                       << " " << c.name << " layer " << layer;
        EXPECT_LE(e_producer, kTolerance)
            << io::arch_name(arch) << " " << stages::boundary_name(b) << " " << c.name;
        // The untouched original still gives the same output (nothing was written in place).
        EXPECT_EQ(run(s, original), y);
        max_block = std::max(max_block, e_block);
        max_producer = std::max(max_producer, e_producer);
        std::printf("  %-6s %-17s %-28s layer %zu: block %.2e  producer %.2e  width %lld\n",
                    io::arch_name(arch).c_str(), std::string(stages::boundary_name(b)).c_str(),
                    c.name.c_str(), layer, e_block, e_producer,
                    static_cast<long long>(width(w, b)));
      }
    }
    std::printf("MAX    %-6s %-17s block %.2e  producer %.2e\n", io::arch_name(arch).c_str(),
                std::string(stages::boundary_name(b)).c_str(), max_block, max_producer);
  }
}

TEST(ChannelTransformFold, LlamaOutputUnchangedAtEveryBoundary) {
  check_equivalence(io::Arch::llama);
}
TEST(ChannelTransformFold, OptOutputUnchangedAtEveryBoundary) { check_equivalence(io::Arch::opt); }

// The last (composed) case of every boundary, all folded into one block.
TEST(ChannelTransformFold, EveryBoundaryAtOnce) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    const ArchModel& s = setup(arch);
    Rng rng(77);
    model::BlockWeights w = s.blocks[0];
    for (Boundary b : kBoundaries) {
      const auto all = cases(s, b);
      for (const auto& step : all.back().steps)
        stages::apply_transform(s.config, w, b, step(rng, w));
    }
    const double e = rel_err(run(s, w), run(s, s.blocks[0]));
    std::printf("ALL    %-6s every boundary composed: block %.2e\n", io::arch_name(arch).c_str(),
                e);
    EXPECT_LE(e, kTolerance) << io::arch_name(arch);
  }
}

TEST(ChannelTransformFold, DiagonalTransformsFoldIntoTheNormWithoutAMap) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    const ArchModel& s = setup(arch);
    Rng rng(7);
    model::BlockWeights w = s.blocks[0];
    const i64 h = s.config.hidden_size;
    stages::apply_transform(s.config, w, Boundary::attn_norm_to_qkv,
                            ChannelTransform::scaling(random_scales(rng, h, true)));
    EXPECT_TRUE(w.attn_norm.map.empty());
    EXPECT_EQ(w.attn_norm.weight.numel(), h);
    // A permutation needs a runtime map; undoing it gives the plain norm back.
    const auto p = random_permutation(rng, h);
    std::vector<i64> inverse(p.size());
    for (std::size_t k = 0; k < p.size(); ++k) inverse[p[k]] = static_cast<i64>(k);
    stages::apply_transform(s.config, w, Boundary::attn_norm_to_qkv,
                            ChannelTransform::permutation(p));
    EXPECT_FALSE(w.attn_norm.map.empty());
    stages::apply_transform(s.config, w, Boundary::attn_norm_to_qkv,
                            ChannelTransform::permutation(inverse));
    EXPECT_TRUE(w.attn_norm.map.empty());
    EXPECT_EQ(w.attn_norm.bias.defined(), s.blocks[0].attn_norm.bias.defined());
    EXPECT_LE(rel_err(run(s, w), run(s, s.blocks[0])), kTolerance);
  }
}

// ---------------------------------------------------------------------------------------------
// Merges

// Splitting channels and merging the copies back: the merged channels are equal, so it is exact.
TEST(ChannelTransformMerge, MergingSplitCopiesBackIsExact) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    const ArchModel& s = setup(arch);
    std::vector<Boundary> boundaries = {Boundary::attn_norm_to_qkv, Boundary::mlp_norm_to_mlp};
    if (!s.config.gated_mlp()) boundaries.push_back(Boundary::up_to_down);
    for (Boundary b : boundaries) {
      Rng rng(21);
      model::BlockWeights w = s.blocks[1];
      const i64 n = width(w, b);
      ChannelTransform split;
      split.in_channels = n;
      split.index = random_split(rng, n);
      stages::apply_transform(s.config, w, b, split);
      ChannelTransform merge;  // every copy back into the channel it came from
      merge.in_channels = split.slots();
      merge.merge = split.index;
      merge.scale = random_scales(rng, n, allowed(s.config, b).negative_scale);
      stages::apply_transform(s.config, w, b, merge);
      ASSERT_EQ(width(w, b), n);
      const double e = rel_err(run(s, w), run(s, s.blocks[1]));
      std::printf("MERGE  %-6s %-17s split copies merged back: block %.2e\n",
                  io::arch_name(arch).c_str(), std::string(stages::boundary_name(b)).c_str(), e);
      EXPECT_LE(e, kTolerance) << io::arch_name(arch) << " " << stages::boundary_name(b);
    }
  }
}

// Merging channels a and b (a < b; b's slot goes into a, later channels move down one).
ChannelTransform merge_pair(i64 n, i64 a, i64 b) {
  ChannelTransform t;
  t.in_channels = n;
  for (i64 k = 0; k < n; ++k) t.merge.push_back(k < b ? k : (k == b ? a : k - 1));
  return t;
}

std::vector<float> linear_out(const model::Linear& l, const std::vector<float>& x) {
  const i64 rows = static_cast<i64>(x.size()) / l.in_features();
  std::vector<float> y(static_cast<std::size_t>(rows * l.out_features()));
  cpu::linear(x.data(), rows, l.in_features(), l.weight.data<float>(), l.bias_or_null(),
              l.out_features(), y.data());
  return y;
}

// Merging two arbitrary channels a, b of a norm output x changes the consumer output by exactly
// (W_a x_a + W_b x_b) - (W_a + W_b)(x_a + x_b) / 2 = (W_a - W_b)(x_a - x_b) / 2.
TEST(ChannelTransformMerge, MergingTwoNormChannelsChangesTheConsumerAsPredicted) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    const ArchModel& s = setup(arch);
    for (Boundary b : {Boundary::attn_norm_to_qkv, Boundary::mlp_norm_to_mlp}) {
      const auto role =
          b == Boundary::attn_norm_to_qkv ? model::LinearRole::q : model::LinearRole::up;
      const model::BlockWeights& original = s.blocks[0];
      const i64 n = width(original, b), a = 5, c = 41;
      Capture before(producer_site(b));
      run(s, original, &before);
      model::BlockWeights w = original;
      stages::apply_transform(s.config, w, b, merge_pair(n, a, c));
      ASSERT_EQ(width(w, b), n - 1);
      Capture after(producer_site(b));
      const auto y = run(s, w, &after);  // the narrowed block runs
      for (float v : y) ASSERT_TRUE(std::isfinite(v));
      const auto old_out = linear_out(original.linear(role), before.values);
      const auto new_out = linear_out(w.linear(role), after.values);
      const model::Linear& l = original.linear(role);
      const i64 rows = static_cast<i64>(before.values.size()) / n, m = l.out_features();
      const float* wt = l.weight.data<float>();
      std::vector<float> change(old_out.size()), predicted(old_out.size());
      for (i64 r = 0; r < rows; ++r)
        for (i64 o = 0; o < m; ++o) {
          const double xa = before.values[r * n + a], xb = before.values[r * n + c];
          predicted[r * m + o] =
              static_cast<float>((double(wt[o * n + a]) - wt[o * n + c]) * (xa - xb) / 2);
          change[r * m + o] = old_out[r * m + o] - new_out[r * m + o];
        }
      const double e = rel_err(change, predicted);
      const double size = std::sqrt(sum_squares(predicted) / sum_squares(old_out));
      std::printf(
          "MERGE  %-6s %-17s channels %lld,%lld: |change - predicted| / |predicted| %.2e "
          "(|predicted| / |output| %.2e)\n",
          io::arch_name(arch).c_str(), std::string(stages::boundary_name(b)).c_str(),
          static_cast<long long>(a), static_cast<long long>(c), e, size);
      // The merge does change the output (the test is not vacuous), by the predicted amount up
      // to fp32 rounding of the consumer output.
      EXPECT_GT(size, 1e-3);
      EXPECT_LE(e, 1e-3) << io::arch_name(arch) << " " << stages::boundary_name(b);
      EXPECT_LE(e * size, 1e-6) << io::arch_name(arch) << " " << stages::boundary_name(b);
    }
  }
}

// After ReLU a merge averages fc1's rows: fc2 then sees the merged activation x'_m in place of
// x_a and x_b, and its output changes by W_a x_a + W_b x_b - (W_a + W_b) x'_m.
TEST(ChannelTransformMerge, MergingAfterReluChangesFc2ByTheMergedActivation) {
  const ArchModel& s = setup(io::Arch::opt);
  const model::BlockWeights& original = s.blocks[0];
  const i64 n = width(original, Boundary::up_to_down), a = 3, c = 100;
  Capture before(model::Site::down_in);
  run(s, original, &before);
  model::BlockWeights w = original;
  stages::apply_transform(s.config, w, Boundary::up_to_down, merge_pair(n, a, c));
  Capture after(model::Site::down_in);
  run(s, w, &after);
  ASSERT_EQ(after.cols, n - 1);
  const auto old_out = linear_out(original.down, before.values);
  const auto new_out = linear_out(w.down, after.values);
  const i64 rows = static_cast<i64>(before.values.size()) / n, m = original.down.out_features();
  const float* wt = original.down.weight.data<float>();
  std::vector<float> change(old_out.size()), predicted(old_out.size());
  for (i64 r = 0; r < rows; ++r) {
    const double xa = before.values[r * n + a], xb = before.values[r * n + c];
    const double xm = after.values[r * (n - 1) + a];
    for (i64 o = 0; o < m; ++o) {
      const double wa = wt[o * n + a], wb = wt[o * n + c];
      predicted[r * m + o] = static_cast<float>(wa * xa + wb * xb - (wa + wb) * xm);
      change[r * m + o] = old_out[r * m + o] - new_out[r * m + o];
    }
  }
  const double e = rel_err(change, predicted);
  std::printf(
      "MERGE  opt    up_to_down        channels %lld,%lld: |change - predicted| / "
      "|predicted| %.2e\n",
      static_cast<long long>(a), static_cast<long long>(c), e);
  EXPECT_LE(e, 1e-3);
}

// ---------------------------------------------------------------------------------------------
// Refusals: each names the boundary and the reason, and leaves the block as it was.

void expect_refused(const ArchModel& s, Boundary b, const ChannelTransform& t,
                    const std::string& reason) {
  const model::BlockWeights& original = s.blocks[0];
  model::BlockWeights w = original;
  try {
    stages::apply_transform(s.config, w, b, t);
    ADD_FAILURE() << "accepted at " << stages::boundary_name(b) << "; expected: " << reason;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(stages::boundary_name(b)), std::string::npos) << msg;
    EXPECT_NE(msg.find(reason), std::string::npos) << msg;
  }
  for (auto role : model::kAllLinearRoles) {
    if (!original.linear(role).weight.defined()) continue;
    EXPECT_EQ(w.linear(role).weight.data<float>(), original.linear(role).weight.data<float>());
    EXPECT_EQ(w.linear(role).bias.defined(), original.linear(role).bias.defined());
  }
  EXPECT_EQ(w.attn_norm.weight.data<float>(), original.attn_norm.weight.data<float>());
  EXPECT_EQ(w.mlp_norm.weight.data<float>(), original.mlp_norm.weight.data<float>());
  EXPECT_TRUE(w.attn_norm.map.empty() && w.mlp_norm.map.empty());
}

std::vector<float> ones(i64 n) { return std::vector<float>(static_cast<std::size_t>(n), 1.0f); }

TEST(ChannelTransformRefusal, ShiftAfterRmsNorm) {
  const ArchModel& s = setup(io::Arch::llama);
  const i64 h = s.config.hidden_size;
  auto z = ones(h);
  expect_refused(s, Boundary::attn_norm_to_qkv, ChannelTransform::shifting(z, {}), "RMSNorm");
  expect_refused(s, Boundary::mlp_norm_to_mlp, ChannelTransform::shifting(z, {}), "RMSNorm");
  // Also inside a transform that needs a map.
  Rng rng(1);
  ChannelTransform t = ChannelTransform::permutation(random_permutation(rng, h));
  t.shift = z;
  expect_refused(s, Boundary::attn_norm_to_qkv, t, "bias can absorb");
  // A zero shift is no shift.
  model::BlockWeights w = s.blocks[0];
  EXPECT_NO_THROW(stages::apply_transform(s.config, w, Boundary::attn_norm_to_qkv,
                                          ChannelTransform::shifting(std::vector<float>(h), {})));
}

TEST(ChannelTransformRefusal, SplitMergeAndCrossHeadPermutationAtVToO) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    const ArchModel& s = setup(arch);
    const i64 kv = s.config.kv_dim(), d = s.config.head_dim;
    ChannelTransform split;
    split.in_channels = kv;
    for (i64 j = 0; j < kv; ++j) split.index.push_back(j);
    split.index.push_back(7);
    expect_refused(s, Boundary::v_to_o, split, "split");
    ChannelTransform merge = merge_pair(kv, 1, 2);
    expect_refused(s, Boundary::v_to_o, merge, "merge");
    std::vector<i64> swap_heads(static_cast<std::size_t>(kv));
    for (i64 j = 0; j < kv; ++j) swap_heads[j] = (j + d) % kv;  // whole heads rotate
    expect_refused(s, Boundary::v_to_o, ChannelTransform::permutation(swap_heads), "kv head");
  }
}

TEST(ChannelTransformRefusal, NegativeScaleBeforeRelu) {
  const ArchModel& s = setup(io::Arch::opt);
  auto scale = ones(s.config.intermediate_size);
  scale[17] = -2.0f;
  expect_refused(s, Boundary::up_to_down, ChannelTransform::scaling(scale), "negative");
  // SwiGLU takes any sign (silu(gate) multiplies up linearly).
  const ArchModel& l = setup(io::Arch::llama);
  auto neg = ones(l.config.intermediate_size);
  neg[17] = -2.0f;
  model::BlockWeights w = l.blocks[0];
  EXPECT_NO_THROW(
      stages::apply_transform(l.config, w, Boundary::up_to_down, ChannelTransform::scaling(neg)));
}

TEST(ChannelTransformRefusal, ShiftAtUpToDown) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    const ArchModel& s = setup(arch);
    expect_refused(s, Boundary::up_to_down,
                   ChannelTransform::shifting(ones(s.config.intermediate_size), {}), "shift");
  }
}

TEST(ChannelTransformRefusal, MergeBeforeSwiGlu) {
  const ArchModel& s = setup(io::Arch::llama);
  expect_refused(s, Boundary::up_to_down, merge_pair(s.config.intermediate_size, 0, 9), "SwiGLU");
}

TEST(ChannelTransformRefusal, BadSizes) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    const ArchModel& s = setup(arch);
    for (Boundary b : kBoundaries) {
      const i64 n = width(s.blocks[0], b);
      expect_refused(s, b, ChannelTransform::identity(n + 1), "input channels");
      expect_refused(s, b, ChannelTransform::scaling(ones(n - 3)), "input channels");
      ChannelTransform t = ChannelTransform::identity(n);
      t.scale = ones(n - 1);
      expect_refused(s, b, t, "scale has");
      t = ChannelTransform::identity(n);
      t.index = {0, 1};
      expect_refused(s, b, t, "read by no slot");
      t.index.clear();
      t.merge = std::vector<i64>(static_cast<std::size_t>(n), 0);
      t.merge.back() = 2;
      expect_refused(s, b, t, "receives no slot");
      t = ChannelTransform::scaling(ones(n));
      t.scale[0] = 0.0f;
      expect_refused(s, b, t, "nonzero finite");
    }
  }
}

}  // namespace
}  // namespace sq
