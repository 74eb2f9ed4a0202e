// Model-level properties: synth determinism and outliers, perplexity of sampled tokens, KV-cache
// consistency, sequence independence, and refusal of checkpoints that do not fit the config.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include "io/safetensors.h"
#include "io/token_file.h"
#include "model/evaluate.h"
#include "model/forward.h"
#include "model/synth.h"
#include "model/weights.h"

namespace sq {
namespace {
namespace fs = std::filesystem;

std::string scratch(const std::string& name) {
  const fs::path p = fs::path(SQ_TEST_TMP_DIR) / "model" / name;
  fs::remove_all(p);
  fs::create_directories(p.parent_path());
  return p.string();
}

model::SynthSpec small_spec(io::Arch arch) {
  model::SynthSpec s;
  s.arch = arch;
  s.hidden = 64;
  s.layers = 2;
  s.heads = 4;
  s.vocab = 256;
  s.max_positions = 128;
  s.calib_seqs = 2;
  s.eval_seqs = 8;
  s.seq_len = 64;
  s.seed = 11;
  s.max_shard_bytes = 64 * 1024;  // several shards, so the index path is exercised
  return s;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

TEST(Synth, SameSeedSameBytesOtherSeedOtherBytes) {
  const auto spec = small_spec(io::Arch::llama);
  const auto a = scratch("det_a"), b = scratch("det_b"), c = scratch("det_c");
  model::write_synth_model(spec, a);
  model::write_synth_model(spec, b);
  auto other = spec;
  other.seed = 12;
  model::write_synth_model(other, c);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(a)) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  ASSERT_TRUE(std::count(files.begin(), files.end(), "model.safetensors.index.json"));
  ASSERT_GE(files.size(), 6u);  // config, >=2 shards, index, calib, eval
  for (const auto& f : files) {
    EXPECT_EQ(read_bytes(fs::path(a) / f), read_bytes(fs::path(b) / f)) << f;
    if (f.ends_with(".safetensors")) {
      EXPECT_NE(read_bytes(fs::path(a) / f), read_bytes(fs::path(c) / f)) << f;
    }
  }
}

TEST(Synth, OutlierChannelsHaveHugeNormWeightsAndOptShifts) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    auto spec = small_spec(arch);
    spec.calib_seqs = spec.eval_seqs = 0;
    spec.hidden = 256;  // 1% -> round(2.56) = 3 channels
    const auto dir = scratch(std::string("outliers_") + io::arch_name(arch));
    const auto r = model::write_synth_model(spec, dir);
    ASSERT_EQ(r.outlier_channels.size(), 3u);
    const auto m = model::Model::open(dir);
    for (int layer = 0; layer < m.num_layers(); ++layer) {
      const auto b = m.load_block(layer);
      for (const auto* norm : {&b.attn_norm, &b.mlp_norm}) {
        const auto w = norm->weight.values<float>();
        std::vector<float> normal;
        for (std::int64_t ch = 0; ch < spec.hidden; ++ch)
          if (!std::count(r.outlier_channels.begin(), r.outlier_channels.end(), ch))
            normal.push_back(std::abs(w[ch]));
        const float max_normal = *std::max_element(normal.begin(), normal.end());
        for (auto ch : r.outlier_channels) {
          EXPECT_GT(std::abs(w[ch]), 25.0f * max_normal) << "layer " << layer << " ch " << ch;
          if (arch == io::Arch::opt) {
            // Shifted by opt_shift_sigmas (5) of the channel's own standard deviation |gamma|.
            EXPECT_NEAR(std::abs(norm->bias.values<float>()[ch]) / std::abs(w[ch]), 5.0, 0.05);
          }
        }
      }
    }
  }
}

TEST(Synth, PerplexityOfSampledTokensIsMeaningful) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    const auto dir = scratch(std::string("ppl_") + io::arch_name(arch));
    const auto spec = small_spec(arch);
    const auto r = model::write_synth_model(spec, dir);
    const auto tokens = io::read_tokens(r.eval_tokens);
    ASSERT_EQ(tokens.seq_len, spec.seq_len);
    const auto m = model::Model::open(dir);
    const auto e = model::evaluate(m, tokens.tokens, spec.eval_seqs, spec.seq_len);
    const double fraction = e.perplexity / double(spec.vocab);
    EXPECT_GT(fraction, 0.015) << io::arch_name(arch) << " ppl " << e.perplexity;
    EXPECT_LT(fraction, 0.30) << io::arch_name(arch) << " ppl " << e.perplexity;
    // And the model predicts its own samples far better than uniform random tokens.
    std::vector<std::uint32_t> uniform(tokens.tokens.size());
    for (std::size_t i = 0; i < uniform.size(); ++i) uniform[i] = (i * 2654435761u) % spec.vocab;
    const auto u = model::evaluate(m, uniform, spec.eval_seqs, spec.seq_len);
    EXPECT_GT(u.mean_nll, e.mean_nll + 0.5);
  }
}

// Token-by-token decoding with the KV cache must reproduce the full-sequence forward.
TEST(Forward, KvCachedDecodingMatchesFullForward) {
  for (auto arch : {io::Arch::llama, io::Arch::opt}) {
    auto spec = small_spec(arch);
    spec.dtype = DType::f32;
    spec.calib_seqs = spec.eval_seqs = 0;
    const auto dir = scratch(std::string("kv_") + io::arch_name(arch));
    model::write_synth_model(spec, dir);
    const auto m = model::Model::open(dir);
    const auto& c = m.config();
    const std::int64_t n_seq = 2, len = 23;
    std::vector<std::uint32_t> ids(n_seq * len);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = (i * 7919u + 3) % spec.vocab;
    const auto full = model::evaluate(m, ids, n_seq, len, {.keep_logits = true});

    const auto emb = m.load_embedding();
    const auto head = m.load_head();
    const auto inv_freq = model::rope_inv_freq(c);
    std::vector<model::BlockWeights> blocks;
    for (int l = 0; l < m.num_layers(); ++l) blocks.push_back(m.load_block(l));
    model::KVCache cache(c, n_seq, len);
    double max_err = 0.0, max_abs = 0.0;
    for (std::int64_t t = 0; t < len; ++t) {
      std::vector<std::uint32_t> step = {ids[t], ids[len + t]};
      const model::Batch batch{.n_seq = n_seq, .seq_len = 1, .past = t};
      Tensor h = model::embed(c, emb, step, batch);
      for (int l = 0; l < m.num_layers(); ++l)
        model::block_forward(c, blocks[l], batch, h,
                             {.inv_freq = inv_freq, .cache = &cache, .layer = l});
      const Tensor logits = model::head_logits(c, head, h.data<float>(), n_seq);
      for (std::int64_t s = 0; s < n_seq; ++s)
        for (std::int64_t v = 0; v < c.vocab_size; ++v) {
          const float ref = full.logits.data<float>()[(s * len + t) * c.vocab_size + v];
          max_abs = std::max(max_abs, double(std::abs(ref)));
          max_err =
              std::max(max_err, double(std::abs(ref - logits.data<float>()[s * c.vocab_size + v])));
        }
    }
    // Same arithmetic in a different order (one-row GEMMs, per-step softmax): fp32 rounding only.
    EXPECT_LT(max_err, 1e-4 * max_abs) << io::arch_name(arch);
  }
}

// A sequence's logits must not depend on which other sequences share its batch.
TEST(Forward, SequencesInABatchAreIndependent) {
  auto spec = small_spec(io::Arch::llama);
  spec.dtype = DType::f32;
  spec.calib_seqs = spec.eval_seqs = 0;
  const auto dir = scratch("independent");
  model::write_synth_model(spec, dir);
  const auto m = model::Model::open(dir);
  const std::int64_t len = 17, V = m.config().vocab_size;
  std::vector<std::uint32_t> a(len), b(len);
  for (std::int64_t i = 0; i < len; ++i) {
    a[i] = (i * 31 + 1) % V;
    b[i] = (i * 17 + 5) % V;
  }
  std::vector<std::uint32_t> ab = a;
  ab.insert(ab.end(), b.begin(), b.end());
  const auto alone = model::evaluate(m, a, 1, len, {.keep_logits = true});
  const auto together = model::evaluate(m, ab, 2, len, {.keep_logits = true});
  // Not bitwise: OpenBLAS blocks a GEMM differently for 17 and 34 rows, so rounding may differ
  // (that is why determinism is promised per micro-batch size). Leakage between sequences would
  // change logits by O(1), far above this bound.
  double max_err = 0.0, max_abs = 0.0;
  for (std::int64_t i = 0; i < len * V; ++i) {
    const float x = alone.logits.data<float>()[i], y = together.logits.data<float>()[i];
    max_err = std::max(max_err, double(std::abs(x - y)));
    max_abs = std::max(max_abs, double(std::abs(x)));
  }
  EXPECT_LT(max_err, 1e-5 * max_abs);
}

// Copies a golden fixture with its tensors edited by `edit`, for the refusal tests.
std::string edited_fixture(const std::string& name,
                           const std::function<void(std::vector<io::NamedTensor>&)>& edit) {
  const std::string src = std::string(SQ_TEST_DATA_DIR) + "/golden/llama_gqa_llama3";
  const auto dir = scratch(name);
  fs::create_directories(dir);
  fs::copy_file(src + "/config.json", dir + "/config.json");
  const auto f = io::SafetensorsFile::open(src + "/model.safetensors");
  std::vector<io::NamedTensor> tensors;
  for (const auto& e : f.entries()) tensors.emplace_back(e.name, f.tensor(e.name).clone());
  edit(tensors);
  io::write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

void expect_refused(const std::string& dir, const std::string& tensor, const std::string& phrase) {
  try {
    model::Model::open(dir);
    ADD_FAILURE() << "expected a refusal mentioning " << phrase;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(tensor), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
  }
}

TEST(ModelOpen, RefusesMissingTensor) {
  const auto dir = edited_fixture("missing", [](auto& t) {
    std::erase_if(t,
                  [](const auto& nt) { return nt.first == "model.layers.1.mlp.up_proj.weight"; });
  });
  expect_refused(dir, "model.layers.1.mlp.up_proj.weight", "missing");
}

TEST(ModelOpen, RefusesWrongShape) {
  const auto dir = edited_fixture("shape", [](auto& t) {
    for (auto& [name, tensor] : t)
      if (name == "model.layers.0.self_attn.k_proj.weight")
        tensor = Tensor::zeros(DType::f32, {8, 64});  // a GQA model read as if kv_heads were 1
  });
  expect_refused(dir, "model.layers.0.self_attn.k_proj.weight", "shape [8, 64]");
}

TEST(ModelOpen, RefusesUnexpectedTensorAndIntegerWeights) {
  auto dir = edited_fixture("unexpected", [](auto& t) {
    t.emplace_back("model.layers.0.self_attn.q_proj.bias", Tensor::zeros(DType::f32, {64}));
  });
  expect_refused(dir, "model.layers.0.self_attn.q_proj.bias", "unexpected");
  dir = edited_fixture("int", [](auto& t) {
    for (auto& [name, tensor] : t)
      if (name == "model.norm.weight") tensor = Tensor::zeros(DType::i32, {64});
  });
  expect_refused(dir, "model.norm.weight", "not a float type");
}

TEST(ModelOpen, OptWithoutModelPrefixLoads) {
  const std::string src = std::string(SQ_TEST_DATA_DIR) + "/golden/opt_tiny";
  const auto dir = scratch("opt_prefix");
  fs::create_directories(dir);
  fs::copy_file(src + "/config.json", dir + "/config.json");
  const auto f = io::SafetensorsFile::open(src + "/model.safetensors");
  std::vector<io::NamedTensor> tensors;
  for (const auto& e : f.entries())
    tensors.emplace_back(e.name.substr(e.name.rfind("model.", 0) == 0 ? 6 : 0), f.tensor(e.name));
  io::write_safetensors(dir + "/model.safetensors", tensors);
  const auto a = model::Model::open(src), b = model::Model::open(dir);
  std::vector<std::uint32_t> ids = {3, 9, 27, 81, 50, 7};
  const auto ra = model::evaluate(a, ids, 1, 6, {.keep_logits = true});
  const auto rb = model::evaluate(b, ids, 1, 6, {.keep_logits = true});
  EXPECT_EQ(ra.perplexity, rb.perplexity);
}

TEST(Evaluate, RefusesTokensOutsideVocabulary) {
  const auto m = model::Model::open(std::string(SQ_TEST_DATA_DIR) + "/golden/opt_tiny");
  std::vector<std::uint32_t> ids = {3, 9, 500, 4};
  try {
    model::evaluate(m, ids, 1, 4);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sq
