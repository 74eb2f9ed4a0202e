// Tests for io/digest (known SHA-256 vectors) and io/checkpoint_store (HDF5 checkpoints): every
// dtype and shape reads back bit for bit, the header round-trips, the digest commit returns is the
// file's, and corruption (bit flips, truncation, foreign files) always ends in sq::Error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "io/digest.h"

#if SQ_WITH_MPI
#include "io/checkpoint_store.h"
#endif

namespace sq::io {
namespace {

namespace fs = std::filesystem;

// A fresh scratch directory named after the running test.
std::string test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir = std::string(SQ_TEST_TMP_DIR) + "/checkpoint_store/" +
                          info->test_suite_name() + "." + info->name();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// --- digest ----------------------------------------------------------------------------------

TEST(Digest, KnownVectors) {
  EXPECT_EQ(sha256_hex(std::string_view("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(std::string_view("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(
      sha256_hex(std::string_view("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Digest, MillionAsStreamedAndFromFile) {
  // FIPS 180-2 vector: one million 'a', fed in uneven pieces and from a file (> 1 MiB buffer).
  const std::string expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
  const std::string million(1000000, 'a');
  Sha256 sha;
  for (std::size_t at = 0; at < million.size(); at += 4099) {
    sha.update(million.data() + at, std::min<std::size_t>(4099, million.size() - at));
  }
  EXPECT_EQ(sha.finish_hex(), expected);
  const std::string file = test_dir() + "/million";
  write_bytes(file, million + million);
  EXPECT_EQ(sha256_file_hex(file), sha256_hex(std::string_view(million + million)));
  write_bytes(file, million);
  EXPECT_EQ(sha256_file_hex(file), expected);
  const std::vector<std::byte> bytes(3, std::byte{0});
  EXPECT_EQ(sha256_hex(std::span<const std::byte>(bytes)),
            sha256_hex(std::string_view("\0\0\0", 3)));
}

TEST(Digest, MissingFileThrowsNamingIt) {
  const std::string file = test_dir() + "/nope";
  try {
    sha256_file_hex(file);
    FAIL() << "expected sq::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, file);
  }
}

#if SQ_WITH_MPI

// --- checkpoint store ------------------------------------------------------------------------

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

CheckpointHeader test_header() {
  CheckpointHeader h;
  h.kind = "block";
  h.recipe_hash = "recipe-7f3a";
  h.model_fingerprint = "model-91bc";
  h.stages = {"calibrate", "smooth", "gptq"};
  h.block = 17;
  return h;
}

// Deterministic, non-trivial bytes for any dtype (float dtypes get finite values; the store
// compares bytes, so any bit pattern would do, but finite values keep failures readable).
Tensor make_tensor(DType dtype, Shape shape, std::uint32_t seed) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  std::mt19937 rng(seed);
  std::byte* b = t.numel() > 0 ? t.mutable_bytes() : nullptr;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    switch (dtype) {
      case DType::f32: {
        const float v = static_cast<float>(rng() % 20001) / 100.0f - 100.0f;
        std::memcpy(b + i * 4, &v, 4);
        break;
      }
      case DType::f16:
      case DType::bf16: {
        // Exponent bits kept below all-ones: finite values in both encodings.
        const auto v = static_cast<std::uint16_t>(rng() & 0xBBFF);
        std::memcpy(b + i * 2, &v, 2);
        break;
      }
      default: {
        const std::size_t size = dtype_size(dtype);
        for (std::size_t k = 0; k < size; ++k) {
          b[static_cast<std::size_t>(i) * size + k] = static_cast<std::byte>(rng());
        }
      }
    }
  }
  return t;
}

void expect_same(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_EQ(a.nbytes(), b.nbytes()) << what;
  if (a.nbytes() > 0) {
    EXPECT_EQ(std::memcmp(a.bytes(), b.bytes(), a.nbytes()), 0) << what;
  }
}

// Files in `dir` whose name marks them as a temporary of the store (".<name>.tmp.<pid>").
std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp.") != std::string::npos) out.push_back(e.path().string());
  }
  return out;
}

// One committed file with a few tensors; returns the digest.
std::string write_small(const std::string& path) {
  CheckpointWriter w(test_header());
  w.put("/stats/qkv_in/absmax", make_tensor(DType::f32, {64}, 1));
  w.put("/weights/q/weight_q", make_tensor(DType::i8, {16, 32}, 2));
  w.put("/weights/q/scale", make_tensor(DType::bf16, {16}, 3));
  w.put_attribute("note", "small");
  return w.commit(path);
}

TEST(CheckpointStore, EveryDTypeAndShapeRoundTrips) {
  const std::string path = test_dir() + "/block_0017.h5";
  const std::vector<Shape> shapes = {
      {},        {0},    {1},       {7},        {3, 5},
      {2, 3, 4}, {0, 4}, {4, 0, 2}, {1000, 700}};  // the last spans several chunks
  const DType dtypes[] = {DType::f32, DType::f16, DType::bf16, DType::i8,
                          DType::u8,  DType::i32, DType::i64};
  CheckpointWriter w(test_header());
  std::vector<std::pair<std::string, Tensor>> put;
  std::uint32_t seed = 100;
  for (DType dtype : dtypes) {
    for (std::size_t s = 0; s < shapes.size(); ++s) {
      const std::string name =
          "/t/" + std::string(dtype_name(dtype)) + "/shape" + std::to_string(s);
      put.emplace_back(name, make_tensor(dtype, shapes[s], seed++));
      w.put(name, put.back().second);
    }
  }
  w.commit(path);

  const CheckpointReader r = CheckpointReader::open(path, "");
  std::vector<std::string> expected_paths;
  for (const auto& [name, t] : put) expected_paths.push_back(name);
  std::sort(expected_paths.begin(), expected_paths.end());
  EXPECT_EQ(r.paths(), expected_paths);
  for (const auto& [name, t] : put) {
    ASSERT_TRUE(r.contains(name)) << name;
    EXPECT_EQ(r.dtype_of(name), t.dtype()) << name;
    expect_same(r.get(name), t, name);
  }
  // Paths without the leading slash name the same tensor.
  EXPECT_TRUE(r.contains("t/f32/shape4"));
  EXPECT_FALSE(r.contains("/t/f32"));  // a group, not a tensor
  EXPECT_FALSE(r.contains("/t/f32/shape99"));
  EXPECT_THROW(r.get("/t/f32/shape99"), Error);
}

TEST(CheckpointStore, HeaderAndAttributesRoundTrip) {
  const std::string dir = test_dir();
  CheckpointHeader h = test_header();
  CheckpointWriter w(h);
  w.put_attribute("calibration_tokens", "131072");
  w.put_attribute("empty", "");
  w.put_attribute("note", "first");
  w.put_attribute("note", "second");  // replaces
  w.commit(dir + "/a.h5");
  const CheckpointReader r = CheckpointReader::open(dir + "/a.h5", "");
  EXPECT_EQ(r.header(), h);
  EXPECT_EQ(r.attribute("calibration_tokens"), "131072");
  EXPECT_EQ(r.attribute("empty"), "");
  EXPECT_EQ(r.attribute("note"), "second");
  EXPECT_FALSE(r.has_attribute("missing"));
  EXPECT_THROW(r.attribute("missing"), Error);
  EXPECT_TRUE(r.paths().empty());

  // A hidden-state file: no block, no stages.
  CheckpointHeader hidden;
  hidden.kind = "hidden";
  hidden.recipe_hash = "r";
  hidden.model_fingerprint = "";
  CheckpointWriter wh(hidden);
  wh.put("hidden/rank_boundary_3", make_tensor(DType::bf16, {2, 8, 16}, 9));
  wh.commit(dir + "/hidden.h5");
  const CheckpointReader rh = CheckpointReader::open(dir + "/hidden.h5", "");
  EXPECT_EQ(rh.header(), hidden);
  EXPECT_TRUE(rh.header().stages.empty());
  EXPECT_EQ(rh.header().block, -1);
}

TEST(CheckpointStore, RejectsBadHeadersAndPaths) {
  CheckpointHeader h = test_header();
  h.kind = "weights";
  EXPECT_THROW(CheckpointWriter{h}, Error);
  h = test_header();
  h.format_version = 2;
  EXPECT_THROW(CheckpointWriter{h}, Error);
  CheckpointWriter w(test_header());
  const Tensor t = make_tensor(DType::f32, {2}, 1);
  w.put("/a/b", t);
  EXPECT_THROW(w.put("a/b", t), Error);     // put twice
  EXPECT_THROW(w.put("/a", t), Error);      // would be tensor and group
  EXPECT_THROW(w.put("/a/b/c", t), Error);  // ditto
  EXPECT_THROW(w.put("/a//c", t), Error);
  EXPECT_THROW(w.put("/", t), Error);
  EXPECT_THROW(w.put("/x/../y", t), Error);
  EXPECT_THROW(w.put("/u", Tensor()), Error);
  EXPECT_THROW(w.put_attribute("", "v"), Error);
}

TEST(CheckpointStore, DigestIsTheFilesDigest) {
  const std::string path = test_dir() + "/block.h5";
  const std::string digest = write_small(path);
  EXPECT_EQ(digest.size(), 64u);
  EXPECT_EQ(digest, sha256_file_hex(path));
  const CheckpointReader r = CheckpointReader::open(path, digest);
  EXPECT_EQ(r.attribute("note"), "small");
  std::string upper = digest;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  EXPECT_NO_THROW(CheckpointReader::open(path, upper));
}

TEST(CheckpointStore, BitFlipsAnywhereFailTheDigest) {
  const std::string dir = test_dir();
  const std::string path = dir + "/block.h5";
  const std::string digest = write_small(path);
  const std::string original = read_bytes(path);
  ASSERT_GT(original.size(), 0u);
  std::mt19937_64 rng(20240611);
  const std::string flipped = dir + "/flipped.h5";
  for (int i = 0; i < 20; ++i) {
    std::string bytes = original;
    const std::size_t offset = rng() % bytes.size();
    const int bit = static_cast<int>(rng() % 8);
    bytes[offset] = static_cast<char>(bytes[offset] ^ (1 << bit));
    write_bytes(flipped, bytes);
    try {
      CheckpointReader::open(flipped, digest);
      ADD_FAILURE() << "flip at byte " << offset << " bit " << bit << " was not caught";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("digest mismatch"), std::string::npos) << e.what();
      EXPECT_EQ(e.context().file, flipped);
    }
  }
}

TEST(CheckpointStore, DataBitFlipCaughtByFletcher32WithoutDigest) {
  const std::string dir = test_dir();
  const std::string path = dir + "/block.h5";
  // A distinctive u8 pattern that cannot occur by chance in HDF5 metadata.
  std::vector<std::uint8_t> pattern(4096);
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    pattern[i] = static_cast<std::uint8_t>((i * 131 + 17) & 0xFF);
  }
  Tensor marked = Tensor::zeros(DType::u8, {64, 64});
  std::memcpy(marked.mutable_bytes(), pattern.data(), pattern.size());
  CheckpointWriter w(test_header());
  w.put("/weights/marked", marked);
  w.put("/weights/other", make_tensor(DType::f32, {32}, 5));
  w.commit(path);

  std::string bytes = read_bytes(path);
  const std::string needle(reinterpret_cast<const char*>(pattern.data()), 256);
  const std::size_t at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  for (std::size_t delta : {std::size_t{0}, std::size_t{100}, std::size_t{4095}}) {
    std::string corrupt = bytes;
    corrupt[at + delta] = static_cast<char>(corrupt[at + delta] ^ 0x10);
    write_bytes(path, corrupt);
    // Metadata is intact: open succeeds; reading the chunk fails its checksum.
    const CheckpointReader r = CheckpointReader::open(path, "");
    try {
      r.get("/weights/marked");
      ADD_FAILURE() << "flip at data byte " << delta << " was not caught";
    } catch (const Error& e) {
      EXPECT_EQ(e.context().file, path);
      EXPECT_EQ(e.context().tensor, "/weights/marked");
    }
    // The other dataset is untouched and still reads.
    EXPECT_NO_THROW(r.get("/weights/other"));
  }
}

TEST(CheckpointStore, TruncatedFilesThrow) {
  const std::string dir = test_dir();
  const std::string path = dir + "/block.h5";
  const std::string digest = write_small(path);
  const std::string original = read_bytes(path);
  const std::string cut = dir + "/cut.h5";
  for (std::size_t length : {std::size_t{0}, std::size_t{7}, std::size_t{100}, original.size() / 2,
                             original.size() - 1}) {
    write_bytes(cut, original.substr(0, length));
    EXPECT_THROW(CheckpointReader::open(cut, digest), Error) << length;
    // Without a digest HDF5 itself notices the missing end of the file.
    EXPECT_THROW(CheckpointReader::open(cut, ""), Error) << length;
  }
}

TEST(CheckpointStore, ForeignAndMissingFilesThrow) {
  const std::string dir = test_dir();
  const std::string text = dir + "/notes.txt";
  write_bytes(text, std::string(5000, 'x'));
  try {
    CheckpointReader::open(text, "");
    FAIL() << "expected sq::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not an HDF5 file"), std::string::npos) << e.what();
    EXPECT_EQ(e.context().file, text);
  }
  EXPECT_THROW(CheckpointReader::open(dir + "/missing.h5", ""), Error);
  EXPECT_THROW(CheckpointReader::open(dir, ""), Error);  // a directory
}

TEST(CheckpointStore, CommitIntoMissingDirectoryLeavesNothing) {
  const std::string dir = test_dir();
  CheckpointWriter w(test_header());
  w.put("/a", make_tensor(DType::f32, {4}, 1));
  const std::string path = dir + "/no/such/dir/block.h5";
  try {
    w.commit(path);
    FAIL() << "expected sq::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, path);
  }
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(CheckpointStore, CommitOntoADirectoryFailsAndCleansUp) {
  // The rename fails after the whole write and verify: the temporary must still go away.
  const std::string dir = test_dir();
  const std::string target = dir + "/block.h5";
  fs::create_directories(target + "/occupied");
  CheckpointWriter w(test_header());
  w.put("/a", make_tensor(DType::f32, {4}, 1));
  EXPECT_THROW(w.commit(target), Error);
  EXPECT_TRUE(temp_files(dir).empty());
  EXPECT_TRUE(fs::is_directory(target + "/occupied"));
}

TEST(CheckpointStore, CommitReplacesExistingFile) {
  const std::string dir = test_dir();
  const std::string path = dir + "/block.h5";
  const std::string first = write_small(path);
  const CheckpointReader old_reader = CheckpointReader::open(path, first);

  CheckpointWriter w(test_header());
  const Tensor replacement = make_tensor(DType::i32, {5, 5}, 77);
  w.put("/weights/new", replacement);
  const std::string second = w.commit(path);
  EXPECT_NE(first, second);
  EXPECT_EQ(second, sha256_file_hex(path));
  const CheckpointReader r = CheckpointReader::open(path, second);
  EXPECT_EQ(r.paths(), std::vector<std::string>{"/weights/new"});
  expect_same(r.get("/weights/new"), replacement, "replacement");
  EXPECT_THROW(CheckpointReader::open(path, first), Error);  // the old digest no longer matches
  // A reader opened before the rename keeps reading the old file (its inode lives on).
  expect_same(old_reader.get("/stats/qkv_in/absmax"), make_tensor(DType::f32, {64}, 1), "old");
  EXPECT_TRUE(temp_files(dir).empty());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(CheckpointStore, LargeTensorVerifiesInSlices) {
  // > kVerifyBytes (64 MiB) so commit's verification reads it in several row blocks.
  const std::string path = test_dir() + "/hidden.h5";
  CheckpointHeader h;
  h.kind = "hidden";
  Tensor big = make_tensor(DType::f32, {4200, 4096}, 3);
  CheckpointWriter w(h);
  w.put("/hidden", big);
  const std::string digest = w.commit(path);
  expect_same(CheckpointReader::open(path, digest).get("/hidden"), big, "big");
}

#endif  // SQ_WITH_MPI

}  // namespace
}  // namespace sq::io
