// Tests for io/model_config: the real model configs under configs/models, every supported
// LLaMA/OPT variant, one test per refusal (the error names the key and the value), round trips.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "io/model_config.h"

namespace sq::io {
namespace {

using nlohmann::json;

const std::string kModels = SQ_TEST_DATA_DIR "/../../configs/models";

// A small, valid LLaMA config; tests change one field at a time.
json llama() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 100,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": null,
    "initializer_range": 0.02,
    "use_cache": true,
    "attention_dropout": 0.0,
    "pretraining_tp": 1,
    "transformers_version": "4.44.0",
    "torch_dtype": "float16"
  })");
}

// A small, valid pre-LN OPT config.
json opt() {
  return json::parse(R"({
    "_remove_final_layer_norm": false,
    "activation_function": "relu",
    "architectures": ["OPTForCausalLM"],
    "do_layer_norm_before": true,
    "dropout": 0.1,
    "enable_bias": true,
    "ffn_dim": 128,
    "hidden_size": 32,
    "layer_norm_elementwise_affine": true,
    "max_position_embeddings": 64,
    "model_type": "opt",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 50,
    "word_embed_proj_dim": 32,
    "torch_dtype": "float16"
  })");
}

// Asserts that parsing refuses `j` and that the error names every one of `parts`.
void expect_refused(const json& j, std::initializer_list<std::string> parts) {
  try {
    parse_hf_config(j, "config.json");
    ADD_FAILURE() << "accepted: " << j.dump();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    EXPECT_EQ(e.context().file, "config.json");
    for (const std::string& part : parts) {
      EXPECT_NE(what.find(part), std::string::npos) << "'" << part << "' not in: " << what;
    }
  }
}

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.norm, b.norm);
  EXPECT_EQ(a.activation, b.activation);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.scaling, b.rope.scaling);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
  EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
  EXPECT_EQ(a.rope.partial_rotary_factor, b.rope.partial_rotary_factor);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.norm_bias, b.norm_bias);
  EXPECT_EQ(a.word_embed_proj_dim, b.word_embed_proj_dim);
  EXPECT_EQ(a.learned_position_offset, b.learned_position_offset);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
}

void expect_round_trip(const ModelConfig& c) {
  const json written = to_hf_config(c);
  SCOPED_TRACE(written.dump());
  expect_same(parse_hf_config(written, "written"), c);
}

// --- the real configs ---------------------------------------------------------------------------

TEST(ModelConfigReal, Llama2_70b) {
  const ModelConfig c = load_hf_config(kModels + "/llama-2-70b.json");
  EXPECT_EQ(c.arch, Arch::llama);
  EXPECT_EQ(c.hidden_size, 8192);
  EXPECT_EQ(c.intermediate_size, 28672);
  EXPECT_EQ(c.num_layers, 80);
  EXPECT_EQ(c.num_heads, 64);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.scaling, RopeScaling::none);
  EXPECT_EQ(c.torch_dtype, DType::f16);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.has_projections());
  EXPECT_TRUE(c.gated_mlp());
  expect_round_trip(c);
}

TEST(ModelConfigReal, Llama3_70b) {
  const ModelConfig c = load_hf_config(kModels + "/llama-3-70b.json");
  EXPECT_EQ(c.hidden_size, 8192);
  EXPECT_EQ(c.intermediate_size, 28672);
  EXPECT_EQ(c.num_layers, 80);
  EXPECT_EQ(c.num_heads, 64);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.scaling, RopeScaling::none);
  EXPECT_EQ(c.torch_dtype, DType::bf16);
  expect_round_trip(c);
}

TEST(ModelConfigReal, Llama31_70b) {
  const ModelConfig c = load_hf_config(kModels + "/llama-3.1-70b.json");
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.rope.scaling, RopeScaling::llama3);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  expect_round_trip(c);
}

TEST(ModelConfigReal, Opt175b) {
  const ModelConfig c = load_hf_config(kModels + "/opt-175b.json");
  EXPECT_EQ(c.arch, Arch::opt);
  EXPECT_EQ(c.hidden_size, 12288);
  EXPECT_EQ(c.intermediate_size, 49152);
  EXPECT_EQ(c.num_layers, 96);
  EXPECT_EQ(c.num_heads, 96);
  EXPECT_EQ(c.num_kv_heads, 96);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 50272);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_FALSE(c.has_projections());
  EXPECT_EQ(c.torch_dtype, DType::f16);
  expect_round_trip(c);
}

TEST(ModelConfigReal, Bloom176b) {
  const ModelConfig c = load_hf_config(kModels + "/bloom-176b.json");
  EXPECT_EQ(c.arch, Arch::bloom);
  EXPECT_EQ(c.hidden_size, 14336);
  EXPECT_EQ(c.num_layers, 70);
  EXPECT_EQ(c.num_heads, 112);
  EXPECT_EQ(c.num_kv_heads, 112);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 4 * 14336);
  EXPECT_EQ(c.vocab_size, 250880);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_EQ(c.activation, Activation::gelu_tanh);
  EXPECT_EQ(c.positions, PositionKind::alibi);
  EXPECT_TRUE(c.embedding_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.attention_bias && c.mlp_bias && c.norm_bias);
  EXPECT_EQ(c.torch_dtype, DType::bf16);
  // Round trip through the config.json spelling.
  const ModelConfig back = parse_hf_config(to_hf_config(c), "written");
  EXPECT_EQ(back.hidden_size, c.hidden_size);
  EXPECT_EQ(back.num_layers, c.num_layers);
  EXPECT_TRUE(back.embedding_norm);
}

TEST(ModelConfigReal, BloomPostLayerNormResidualIsRefused) {
  std::ifstream in(kModels + "/bloom-176b.json");
  json j = json::parse(in);
  j["apply_residual_connection_post_layernorm"] = true;
  try {
    parse_hf_config(j, "bloom.json");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("apply_residual_connection_post_layernorm"),
              std::string::npos);
  }
}

// --- LLaMA variants -----------------------------------------------------------------------------

TEST(ModelConfigLlama, DefaultsMatchTransformers) {
  json j = llama();
  j.erase("rms_norm_eps");
  j.erase("torch_dtype");
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_EQ(c.num_kv_heads, 4);  // no GQA
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.torch_dtype, DType::f32);
  EXPECT_EQ(c.norm, NormKind::rms);
  EXPECT_EQ(c.activation, Activation::silu);
  EXPECT_EQ(c.positions, PositionKind::rope);
  EXPECT_FALSE(c.norm_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.word_embed_proj_dim, 64);
  EXPECT_EQ(c.learned_position_offset, 0);
  expect_round_trip(c);
}

TEST(ModelConfigLlama, Gqa) {
  json j = llama();
  j["num_key_value_heads"] = 2;
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.q_dim(), 64);
  EXPECT_EQ(c.kv_dim(), 32);
  expect_round_trip(c);
}

TEST(ModelConfigLlama, NullKvHeadsAndHeadDimMeanDefaults) {
  json j = llama();
  j["num_key_value_heads"] = nullptr;
  j["head_dim"] = nullptr;
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
}

TEST(ModelConfigLlama, ExplicitHeadDim) {
  json j = llama();
  j["head_dim"] = 32;  // q_dim 128 != hidden 64, as in some newer models
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.q_dim(), 128);
  expect_round_trip(c);
}

TEST(ModelConfigLlama, ExplicitHeadDimAllowsIndivisibleHidden) {
  json j = llama();
  j["hidden_size"] = 60;
  j["head_dim"] = 16;
  EXPECT_EQ(parse_hf_config(j, "config.json").head_dim, 16);
}

TEST(ModelConfigLlama, RopeTheta) {
  json j = llama();
  j["rope_theta"] = 500000;  // an integer is a fine number
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  expect_round_trip(c);
}

TEST(ModelConfigLlama, Llama3RopeScaling) {
  json j = llama();
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_EQ(c.rope.scaling, RopeScaling::llama3);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  expect_round_trip(c);
}

TEST(ModelConfigLlama, LinearRopeScalingWithLegacyTypeKey) {
  json j = llama();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_EQ(c.rope.scaling, RopeScaling::linear);
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
  expect_round_trip(c);
}

TEST(ModelConfigLlama, DefaultRopeScalingObject) {
  json j = llama();
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse_hf_config(j, "config.json").rope.scaling, RopeScaling::none);
}

TEST(ModelConfigLlama, RopeParametersFromNewerWriters) {
  // What transformers 5 writes: theta inside rope_parameters, dtype instead of torch_dtype.
  json j = llama();
  j.erase("torch_dtype");
  j["dtype"] = "bfloat16";
  j["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 500000.0},
                          {"factor", 32.0},          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.scaling, RopeScaling::llama3);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);
  EXPECT_EQ(c.torch_dtype, DType::bf16);
  expect_round_trip(c);
}

TEST(ModelConfigLlama, RopeParametersDefaultType) {
  json j = llama();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_DOUBLE_EQ(c.rope.theta, 1000000.0);
  EXPECT_EQ(c.rope.scaling, RopeScaling::none);
}

TEST(ModelConfigLlama, RopeParametersAndScalingThatAgree) {
  json j = llama();
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 4.0}, {"rope_theta", 500000.0}};
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_EQ(c.rope.scaling, RopeScaling::linear);
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
}

TEST(ModelConfigLlama, TiedEmbeddingsAndBiases) {
  json j = llama();
  j["tie_word_embeddings"] = true;
  j["attention_bias"] = true;
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.mlp_bias);
  expect_round_trip(c);

  j["attention_bias"] = false;
  j["mlp_bias"] = true;
  const ModelConfig m = parse_hf_config(j, "config.json");
  EXPECT_FALSE(m.attention_bias);
  EXPECT_TRUE(m.mlp_bias);
  expect_round_trip(m);
}

TEST(ModelConfigLlama, ArchitecturesAloneIdentifyTheModel) {
  json j = llama();
  j.erase("model_type");
  EXPECT_EQ(parse_hf_config(j, "config.json").arch, Arch::llama);
}

TEST(ModelConfigLlama, BenignKeysAreIgnored) {
  json j = llama();
  j["pretraining_tp"] = 2;  // only slices transformers' matmuls: same math
  j["sliding_window"] = nullptr;
  j["partial_rotary_factor"] = 1.0;
  j["some_future_key"] = {{"x", 1}};
  EXPECT_NO_THROW(parse_hf_config(j, "config.json"));
}

// --- OPT ----------------------------------------------------------------------------------------

TEST(ModelConfigOpt, PreLnParses) {
  const ModelConfig c = parse_hf_config(opt(), "config.json");
  EXPECT_EQ(c.arch, Arch::opt);
  EXPECT_EQ(c.model_type, "opt");
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.norm, NormKind::layer);
  EXPECT_TRUE(c.norm_bias);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_EQ(c.activation, Activation::relu);
  EXPECT_FALSE(c.gated_mlp());
  EXPECT_EQ(c.positions, PositionKind::learned);
  EXPECT_EQ(c.learned_position_offset, 2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);  // OPT's default
  EXPECT_FALSE(c.has_projections());
  expect_round_trip(c);
}

TEST(ModelConfigOpt, PostLnIsRefused) {
  json j = opt();
  j["do_layer_norm_before"] = false;
  expect_refused(j, {"do_layer_norm_before", "post-LN", "opt-350m"});
}

TEST(ModelConfigOpt, WordEmbedProjDimGivesProjections) {
  json j = opt();
  j["word_embed_proj_dim"] = 16;
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_EQ(c.word_embed_proj_dim, 16);
  EXPECT_TRUE(c.has_projections());
  expect_round_trip(c);
}

TEST(ModelConfigOpt, DisabledBias) {
  json j = opt();
  j["enable_bias"] = false;
  const ModelConfig c = parse_hf_config(j, "config.json");
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_TRUE(c.norm_bias);
  expect_round_trip(c);
}

TEST(ModelConfigOpt, Refusals) {
  json j = opt();
  j["activation_function"] = "gelu";
  expect_refused(j, {"activation_function", "gelu"});
  j = opt();
  j["layer_norm_elementwise_affine"] = false;
  expect_refused(j, {"layer_norm_elementwise_affine", "false"});
  j = opt();
  j["_remove_final_layer_norm"] = true;
  expect_refused(j, {"_remove_final_layer_norm", "true"});
  j = opt();
  j.erase("ffn_dim");
  expect_refused(j, {"ffn_dim", "missing"});
  j = opt();
  j["num_attention_heads"] = 5;
  expect_refused(j, {"num_attention_heads", "5", "32"});
}

// --- refusals: the error names the key and the value -------------------------------------------

TEST(ModelConfigRefusal, UnsupportedRopeType) {
  for (const std::string type : {"dynamic", "yarn", "longrope", "su", "made_up"}) {
    json j = llama();
    j["rope_scaling"] = {{"rope_type", type}, {"factor", 2.0}};
    expect_refused(j, {"rope_scaling.rope_type", type});
  }
  json j = llama();
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  expect_refused(j, {"rope_scaling.type", "dynamic"});
  j = llama();
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"rope_theta", 10000.0}};
  expect_refused(j, {"rope_parameters.rope_type", "yarn"});
}

TEST(ModelConfigRefusal, BadRopeScalingValues) {
  json j = llama();
  j["rope_scaling"] = {{"rope_type", "linear"}};
  expect_refused(j, {"rope_scaling.factor", "missing"});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", -2.0}};
  expect_refused(j, {"rope_scaling.factor", "-2.0"});
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 4.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  expect_refused(j, {"rope_scaling.high_freq_factor", "4"});
  j["rope_scaling"].erase("original_max_position_embeddings");
  j["rope_scaling"]["high_freq_factor"] = 8.0;
  expect_refused(j, {"rope_scaling.original_max_position_embeddings", "missing"});
  j["rope_scaling"] = "linear";
  expect_refused(j, {"rope_scaling", "\"linear\""});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"type", "dynamic"}, {"factor", 2.0}};
  expect_refused(j, {"rope_scaling.type", "dynamic", "linear"});
}

TEST(ModelConfigRefusal, RopeParametersDisagreeWithRopeScaling) {
  json j = llama();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 4.0}};
  expect_refused(j, {"rope_scaling", "factor 2", "factor 4"});
  j = llama();
  j["rope_theta"] = 10000.0;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  expect_refused(j, {"rope_parameters.rope_theta", "500000", "10000"});
}

TEST(ModelConfigRefusal, PartialRotaryFactor) {
  json j = llama();
  j["partial_rotary_factor"] = 0.5;
  expect_refused(j, {"partial_rotary_factor", "0.5"});
  j = llama();
  j["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", 0.25}};
  expect_refused(j, {"rope_parameters.partial_rotary_factor", "0.25"});
}

TEST(ModelConfigRefusal, BadHiddenAct) {
  json j = llama();
  j["hidden_act"] = "gelu_pytorch_tanh";
  expect_refused(j, {"hidden_act", "gelu_pytorch_tanh"});
}

TEST(ModelConfigRefusal, UnknownModelType) {
  json j = llama();
  j["model_type"] = "mistral";
  expect_refused(j, {"model_type", "mistral"});
  j = llama();
  j.erase("model_type");
  j.erase("architectures");
  expect_refused(j, {"model_type", "missing"});
}

TEST(ModelConfigRefusal, ArchitecturesThatDoNotFit) {
  json j = llama();
  j["architectures"] = {"LlamaForSequenceClassification"};
  expect_refused(j, {"architectures", "LlamaForSequenceClassification"});
  j["architectures"] = {"OPTForCausalLM"};
  expect_refused(j, {"architectures", "OPTForCausalLM", "llama"});
}

TEST(ModelConfigRefusal, MissingKey) {
  for (const std::string key : {"hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "vocab_size"}) {
    json j = llama();
    j.erase(key);
    expect_refused(j, {key, "missing"});
  }
}

TEST(ModelConfigRefusal, ZeroAndNegativeSizes) {
  for (const std::string key :
       {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "vocab_size", "max_position_embeddings", "num_key_value_heads", "head_dim"}) {
    json j = llama();
    j[key] = 0;
    expect_refused(j, {key, "got 0"});
    j[key] = -8;
    expect_refused(j, {key, "-8"});
  }
  json j = opt();
  j["word_embed_proj_dim"] = 0;
  expect_refused(j, {"word_embed_proj_dim", "0"});
}

TEST(ModelConfigRefusal, WrongTypes) {
  json j = llama();
  j["hidden_size"] = "4096";
  expect_refused(j, {"hidden_size", "\"4096\""});
  j = llama();
  j["hidden_size"] = 64.5;
  expect_refused(j, {"hidden_size", "64.5"});
  j = llama();
  j["num_hidden_layers"] = nullptr;
  expect_refused(j, {"num_hidden_layers", "null"});
  j = llama();
  j["tie_word_embeddings"] = 1;
  expect_refused(j, {"tie_word_embeddings", "1"});
  j = llama();
  j["rms_norm_eps"] = "1e-5";
  expect_refused(j, {"rms_norm_eps", "\"1e-5\""});
  j = llama();
  j["rms_norm_eps"] = 0.0;
  expect_refused(j, {"rms_norm_eps", "0.0"});
  j = llama();
  j["model_type"] = 7;
  expect_refused(j, {"model_type", "7"});
  expect_refused(json::array({1, 2}), {"JSON object", "[1,2]"});
}

TEST(ModelConfigRefusal, HugeSize) {
  json j = llama();
  j["vocab_size"] = std::uint64_t{1} << 40;
  expect_refused(j, {"vocab_size", "1099511627776"});
}

TEST(ModelConfigRefusal, KvHeadsNotDividingHeads) {
  json j = llama();
  j["num_key_value_heads"] = 3;
  expect_refused(j, {"num_key_value_heads", "3", "4"});
  j["num_key_value_heads"] = 8;  // more kv heads than heads
  expect_refused(j, {"num_key_value_heads", "8"});
}

TEST(ModelConfigRefusal, HeadsNotDividingHidden) {
  json j = llama();
  j["num_attention_heads"] = 6;
  expect_refused(j, {"num_attention_heads", "6", "64"});
}

TEST(ModelConfigRefusal, OddHeadDim) {
  json j = llama();
  j["head_dim"] = 15;
  expect_refused(j, {"head_dim", "15"});
}

TEST(ModelConfigRefusal, SlidingWindow) {
  json j = llama();
  j["sliding_window"] = 4096;
  expect_refused(j, {"sliding_window", "4096"});
}

TEST(ModelConfigRefusal, Dtype) {
  json j = llama();
  j["torch_dtype"] = "float64";
  expect_refused(j, {"torch_dtype", "float64"});
  j = llama();
  j["dtype"] = "bfloat16";  // torch_dtype says float16
  expect_refused(j, {"dtype", "bfloat16", "float16"});
}

TEST(ModelConfigRefusal, AlreadyQuantized) {
  json j = llama();
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  expect_refused(j, {"quantization_config", "gptq"});
}

// --- files --------------------------------------------------------------------------------------

std::string temp_dir(const std::string& name) {
  const std::string dir = std::string(SQ_TEST_TMP_DIR) + "/model_config_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(ModelConfigFile, DirectoryMeansConfigJson) {
  const std::string dir = temp_dir("dir");
  std::ofstream(dir + "/config.json") << llama().dump(2);
  EXPECT_EQ(load_hf_config(dir).hidden_size, 64);
  EXPECT_EQ(load_hf_config(dir + "/config.json").hidden_size, 64);
}

TEST(ModelConfigFile, InvalidJsonNamesTheFile) {
  const std::string dir = temp_dir("invalid");
  std::ofstream(dir + "/config.json") << "{\"hidden_size\": 64,";
  try {
    load_hf_config(dir);
    FAIL() << "accepted invalid JSON";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, dir + "/config.json");
    EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos) << e.what();
  }
}

TEST(ModelConfigFile, MissingFileNamesTheFile) {
  const std::string dir = temp_dir("missing");
  try {
    load_hf_config(dir);
    FAIL() << "accepted a directory without config.json";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir + "/config.json"), std::string::npos) << e.what();
  }
}

TEST(ModelConfigFile, ErrorsFromAFileNameIt) {
  const std::string dir = temp_dir("bad_value");
  json j = llama();
  j["hidden_act"] = "relu";
  std::ofstream(dir + "/config.json") << j.dump();
  try {
    load_hf_config(dir);
    FAIL() << "accepted relu LLaMA";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, dir + "/config.json");
    EXPECT_EQ(e.context().key, "hidden_act");
  }
}

// --- writing ------------------------------------------------------------------------------------

TEST(ModelConfigWrite, WritesTheTransformersSpelling) {
  json j = llama();
  j["num_key_value_heads"] = 2;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const json out = to_hf_config(parse_hf_config(j, "config.json"));
  EXPECT_EQ(out.at("model_type"), "llama");
  EXPECT_EQ(out.at("architectures"), json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(out.at("num_key_value_heads"), 2);
  EXPECT_EQ(out.at("hidden_act"), "silu");
  EXPECT_EQ(out.at("torch_dtype"), "float16");
  EXPECT_EQ(out.at("rope_scaling"), json({{"rope_type", "linear"}, {"factor", 2.0}}));
  EXPECT_EQ(out.at("rms_norm_eps"), 1e-5);

  const json o = to_hf_config(parse_hf_config(opt(), "config.json"));
  EXPECT_EQ(o.at("model_type"), "opt");
  EXPECT_EQ(o.at("architectures"), json::array({"OPTForCausalLM"}));
  EXPECT_EQ(o.at("ffn_dim"), 128);
  EXPECT_EQ(o.at("do_layer_norm_before"), true);
  EXPECT_EQ(o.at("enable_bias"), true);
  EXPECT_EQ(o.at("word_embed_proj_dim"), 32);
}

TEST(ModelConfigWrite, RefusesWhatConfigJsonCannotSay) {
  ModelConfig c = parse_hf_config(opt(), "config.json");
  c.mlp_bias = false;  // OPT has one enable_bias for both
  EXPECT_THROW(to_hf_config(c), Error);
  c = parse_hf_config(llama(), "config.json");
  c.norm = NormKind::layer;
  EXPECT_THROW(to_hf_config(c), Error);
  c = parse_hf_config(llama(), "config.json");
  c.torch_dtype = DType::i8;
  EXPECT_THROW(to_hf_config(c), Error);
  c = parse_hf_config(llama(), "config.json");
  c.hidden_size = 0;
  EXPECT_THROW(to_hf_config(c), Error);
}

TEST(ModelConfigWrite, ArchName) {
  EXPECT_EQ(arch_name(Arch::llama), "llama");
  EXPECT_EQ(arch_name(Arch::opt), "opt");
}

}  // namespace
}  // namespace sq::io
