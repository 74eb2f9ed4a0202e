// Tests for io/safetensors and io/atomic_file: round trips of every dtype, zero-copy views, a
// file made by the Python package, and one test per rule the reader enforces (hand-built bytes).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/tensor.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace sq::io {
namespace {

namespace fs = std::filesystem;

// A fresh scratch directory named after the running test.
std::string test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir =
      std::string(SQ_TEST_TMP_DIR) + "/safetensors/" + info->test_suite_name() + "." + info->name();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string le64(std::uint64_t value) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
  return out;
}

// A safetensors file: the header text exactly as given, then `buffer` zero bytes.
std::string st_file(const std::string& header, std::size_t buffer) {
  return le64(header.size()) + header + std::string(buffer, '\0');
}

// One header entry, as JSON text.
std::string entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}";
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

// Writes `bytes` as a file, asserts open() refuses it with an error naming the file, the tensor
// (when given) and containing `phrase`.
void expect_refused(const std::string& bytes, const std::string& phrase,
                    const std::string& tensor = "") {
  const std::string path = test_dir() + "/bad.safetensors";
  write_bytes(path, bytes);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "accepted " << path;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.context().file, path) << what;
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find(phrase), std::string::npos) << "'" << phrase << "' not in: " << what;
    if (!tensor.empty()) {
      EXPECT_EQ(e.context().tensor, tensor) << what;
      EXPECT_NE(what.find("'" + tensor + "'"), std::string::npos) << what;
    }
  }
}

// One tensor of each dtype, with values that exercise signs, extremes and odd shapes.
std::vector<NamedTensor> all_dtypes() {
  std::vector<NamedTensor> out;
  const std::vector<float> f = {
      0.0f, -0.0f, 1.5f, -3.25f, 1e-40f, 65504.0f, std::numeric_limits<float>::infinity(), 3.0e38f};
  out.emplace_back("a.f32", Tensor::from_f32(f, {2, 4}));
  out.emplace_back("b.f16", Tensor::from_f32(f, {8}).to(DType::f16));
  out.emplace_back("c.bf16", Tensor::from_f32(f, {4, 2}).to(DType::bf16));
  Tensor i8 = Tensor::zeros(DType::i8, {3});
  i8.mutable_data<std::int8_t>()[0] = -128;
  i8.mutable_data<std::int8_t>()[2] = 127;
  out.emplace_back("d.i8", i8);
  Tensor u8 = Tensor::zeros(DType::u8, {1, 5});
  for (int i = 0; i < 5; ++i) {
    u8.mutable_data<std::uint8_t>()[i] = static_cast<std::uint8_t>(50 * i + 5);
  }
  out.emplace_back("e.u8", u8);
  Tensor i32 = Tensor::zeros(DType::i32, {2});
  i32.mutable_data<std::int32_t>()[0] = std::numeric_limits<std::int32_t>::min();
  i32.mutable_data<std::int32_t>()[1] = 123456789;
  out.emplace_back("f.i32", i32);
  Tensor i64 = Tensor::zeros(DType::i64, {2, 1});
  i64.mutable_data<std::int64_t>()[0] = -(std::int64_t{1} << 60);
  i64.mutable_data<std::int64_t>()[1] = std::numeric_limits<std::int64_t>::max();
  out.emplace_back("g.i64", i64);
  out.emplace_back("h.empty", Tensor::zeros(DType::f32, {0, 16}));
  return out;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.bytes(), b.bytes(), a.nbytes()) == 0);
}

TEST(Safetensors, RoundTripsEveryDTypeWithMetadata) {
  const std::string path = test_dir() + "/model.safetensors";
  const auto tensors = all_dtypes();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "héllo \"x\""}};
  write_safetensors(path, tensors, metadata);

  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file.header_size() % 8, 0u);
  EXPECT_EQ(file.data_offset() % 8, 0u);
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.entries().size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    // Written in the given order, so offset order is the same.
    EXPECT_EQ(file.entries()[i].name, name);
    ASSERT_TRUE(file.entries()[i].dtype.has_value());
    EXPECT_EQ(*file.entries()[i].dtype, t.dtype());
    EXPECT_EQ(file.entries()[i].dtype_name, safetensors_dtype_name(t.dtype()));
    EXPECT_TRUE(same_bytes(file.tensor(name), t)) << name;
  }
  // Padding is spaces, and __metadata__ comes first.
  const std::string raw = read_bytes(path);
  const std::string header = raw.substr(8, file.header_size());
  EXPECT_EQ(header.rfind(R"({"__metadata__":)", 0), 0u) << header;
  EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));
  // Half values survive exactly.
  EXPECT_EQ(f16_to_f32(file.tensor("b.f16").half_bits()[3]), -3.25f);
  EXPECT_EQ(bf16_to_f32(file.tensor("c.bf16").half_bits()[2]), 1.5f);
}

TEST(Safetensors, EmptyFileAndNoMetadata) {
  const std::string path = test_dir() + "/empty.safetensors";
  write_safetensors(path, {});
  EXPECT_EQ(read_bytes(path), le64(8) + "{}      ");
  const auto file = SafetensorsFile::open(path);
  EXPECT_TRUE(file.entries().empty());
  EXPECT_TRUE(file.metadata().empty());
}

TEST(Safetensors, ViewsAreZeroCopy) {
  const std::string path = test_dir() + "/model.safetensors";
  write_safetensors(path, all_dtypes());
  const auto file = SafetensorsFile::open(path);
  const std::byte* begin = file.mapping()->data();
  const std::byte* end = begin + file.mapping()->size();
  for (const auto& e : file.entries()) {
    const Tensor t = file.tensor(e.name);
    EXPECT_FALSE(t.writable()) << e.name;
    EXPECT_EQ(t.bytes(), begin + file.data_offset() + e.begin) << e.name;
    EXPECT_TRUE(t.bytes() >= begin && t.bytes() + t.nbytes() <= end) << e.name;
  }
  // The view keeps the mapping alive after the file object is gone.
  Tensor kept;
  {
    const auto again = SafetensorsFile::open(path);
    kept = again.tensor("a.f32");
  }
  EXPECT_EQ(kept.values<float>()[2], 1.5f);
}

TEST(Safetensors, MisalignedTensorIsCopiedNotViewed) {
  const std::string path = test_dir() + "/model.safetensors";
  const Tensor odd = Tensor::from_f32(std::vector<float>{1.0f}, {1}).to(DType::f16);  // 2 bytes
  const Tensor f32 = Tensor::from_f32(std::vector<float>{2.5f, -7.0f}, {2});
  write_safetensors(path, {{"odd", odd}, {"f32", f32}});
  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file.entry("f32").begin, 2u);
  const Tensor t = file.tensor("f32");
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.bytes()) % 4, 0u);
  EXPECT_EQ(t.values<float>()[0], 2.5f);
  EXPECT_EQ(t.values<float>()[1], -7.0f);
}

// Written by the Python safetensors package (tests/data/safetensors/make_fixture.py).
TEST(Safetensors, ReadsFileWrittenByPythonSafetensors) {
  const auto file = SafetensorsFile::open(SQ_TEST_DATA_DIR "/safetensors/reference.safetensors");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("source"), "make_fixture.py");
  ASSERT_EQ(file.entries().size(), 5u);

  const Tensor f32 = file.tensor("weight.f32");
  EXPECT_EQ(f32.shape(), (Shape{2, 3}));
  EXPECT_EQ(std::vector<float>(f32.values<float>().begin(), f32.values<float>().end()),
            (std::vector<float>{1.5f, -2.25f, 0.0f, 3.0f, 1e-8f, -1e30f}));

  const Tensor f16 = file.tensor("weight.f16");
  EXPECT_EQ(f16.dtype(), DType::f16);
  const std::vector<float> f16_expected = {1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -14),
                                           std::ldexp(1.0f, -24)};
  ASSERT_EQ(f16.numel(), 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(f16_to_f32(f16.half_bits()[i]), f16_expected[i]) << i;

  const Tensor bf16 = file.tensor("weight.bf16");
  EXPECT_EQ(bf16.shape(), (Shape{2, 2}));
  const std::vector<float> bf16_expected = {1.0f, -1.5f, 3.140625f, -0.0078125f};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(bf16_to_f32(bf16.half_bits()[i]), bf16_expected[i]) << i;

  const Tensor i64 = file.tensor("ids.i64");
  EXPECT_EQ(std::vector<std::int64_t>(i64.values<std::int64_t>().begin(),
                                      i64.values<std::int64_t>().end()),
            (std::vector<std::int64_t>{-1, 0, (std::int64_t{1} << 40) + 7}));

  const Tensor empty = file.tensor("empty.f32");
  EXPECT_EQ(empty.shape(), (Shape{0, 4}));
  EXPECT_EQ(empty.numel(), 0);
}

TEST(Safetensors, ValidDTypesShardQuantDoesNotHoldOpenButRefuseTensor) {
  const std::string path = test_dir() + "/exotic.safetensors";
  const std::string header = R"({"fp8":)" + entry("F8_E4M3", "[4]", "[0,4]") + R"(,"fp4":)" +
                             entry("F4", "[4]", "[4,6]") + R"(,"fp6":)" +
                             entry("F6_E2M3", "[4]", "[6,9]") + R"(,"c64":)" +
                             entry("C64", "[1]", "[9,17]") + "}";
  write_bytes(path, st_file(header, 17));
  const auto file = SafetensorsFile::open(path);
  EXPECT_FALSE(file.entry("fp8").dtype.has_value());
  EXPECT_EQ(file.entry("fp6").dtype_name, "F6_E2M3");
  try {
    file.tensor("fp8");
    ADD_FAILURE() << "tensor() of an F8_E4M3 entry did not throw";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find("'fp8'"), std::string::npos) << what;
    EXPECT_NE(what.find("F8_E4M3"), std::string::npos) << what;
  }
}

TEST(Safetensors, UnknownTensorNamesFileAndTensor) {
  const std::string path = test_dir() + "/model.safetensors";
  write_safetensors(path, all_dtypes());
  const auto file = SafetensorsFile::open(path);
  EXPECT_TRUE(file.contains("a.f32"));
  EXPECT_FALSE(file.contains("nope"));
  try {
    file.entry("nope");
    ADD_FAILURE() << "entry() of a missing tensor did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, path);
    EXPECT_EQ(e.context().tensor, "nope");
    EXPECT_NE(std::string(e.what()).find("no such tensor"), std::string::npos) << e.what();
  }
  EXPECT_THROW(file.tensor("nope"), Error);
}

TEST(Safetensors, WriterRefusesDuplicateAndReservedNames) {
  const std::string dir = test_dir();
  const Tensor t = Tensor::zeros(DType::f32, {2});
  try {
    write_safetensors(dir + "/dup.safetensors", {{"w", t}, {"w", t}});
    ADD_FAILURE() << "duplicate names accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().tensor, "w");
    EXPECT_NE(std::string(e.what()).find("duplicate"), std::string::npos) << e.what();
  }
  try {
    write_safetensors(dir + "/meta.safetensors", {{"__metadata__", t}});
    ADD_FAILURE() << "a tensor named __metadata__ accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reserved"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(files_in(dir).empty());  // nothing written, not even a temporary file
}

// --- One test per refusal rule --------------------------------------------------------------

TEST(SafetensorsRefuses, FileShorterThan8Bytes) {
  expect_refused("", "shorter than the 8-byte");
  expect_refused("\x02\0\0\0", "shorter than the 8-byte");
}

TEST(SafetensorsRefuses, HeaderLargerThan100MB) {
  expect_refused(le64(100'000'001) + "{}", "exceeds the limit of 100000000");
}

TEST(SafetensorsRefuses, HeaderPastEndOfFile) {
  expect_refused(le64(64) + "{}", "past the end of the file");
}

TEST(SafetensorsRefuses, InvalidUtf8) {
  expect_refused(st_file("{\"w\xff\":" + entry("F32", "[0]", "[0,0]") + "}", 0), "not valid UTF-8");
}

TEST(SafetensorsRefuses, OverlongAndSurrogateUtf8) {
  expect_refused(st_file("{\"\xc0\xaf\":{}}", 0), "not valid UTF-8");          // overlong '/'
  expect_refused(st_file("{\"\xed\xa0\x80\":{}}", 0), "not valid UTF-8");      // U+D800
  expect_refused(st_file("{\"\xf4\x90\x80\x80\":{}}", 0), "not valid UTF-8");  // > U+10FFFF
}

TEST(SafetensorsRefuses, InvalidJson) {
  expect_refused(st_file(R"({"w": )", 0), "not valid JSON");
  expect_refused(st_file("{} x", 0), "not valid JSON");  // trailing garbage
}

TEST(SafetensorsRefuses, HeaderNotAnObject) {
  expect_refused(st_file("[1, 2]  ", 0), "not a JSON object");
}

TEST(SafetensorsRefuses, DuplicateTensorName) {
  const std::string e = entry("F32", "[1]", "[0,4]");
  expect_refused(st_file(R"({"w":)" + e + R"(,"w":)" + e + "}", 4), "duplicate key", "w");
}

TEST(SafetensorsRefuses, DuplicateTensorNameSpelledWithEscapes) {
  // "a\u0062" is "ab": the same key spelled differently.
  const std::string e = entry("F32", "[1]", "[0,4]");
  expect_refused(st_file(R"({"ab":)" + e + R"(,"a\u0062":)" + e + "}", 4), "duplicate key", "ab");
}

TEST(SafetensorsRefuses, DuplicateFieldInsideEntry) {
  expect_refused(
      st_file(R"({"w":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}})", 4),
      "duplicate key 'dtype'", "w");
}

TEST(SafetensorsRefuses, DuplicateMetadataKey) {
  expect_refused(st_file(R"({"__metadata__":{"a":"1","a":"2"}})", 0), "duplicate key 'a'");
}

TEST(SafetensorsRefuses, TensorNamedMetadata) {
  expect_refused(st_file(R"({"__metadata__":)" + entry("F32", "[1]", "[0,4]") + "}", 4),
                 "__metadata__' must be a map of string to string");
}

TEST(SafetensorsRefuses, MetadataNotAnObject) {
  expect_refused(st_file(R"({"__metadata__":["a"]})", 0), "must be a map of string to string");
}

TEST(SafetensorsRefuses, MetadataValueNotAString) {
  expect_refused(st_file(R"({"__metadata__":{"epoch":3}})", 0),
                 "must be a map of string to string");
}

TEST(SafetensorsRefuses, EntryNotAnObject) {
  expect_refused(st_file(R"({"w":[0,4]})", 0), "entry must be a JSON object", "w");
}

TEST(SafetensorsRefuses, EntryMissingAField) {
  expect_refused(st_file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4), "missing field 'dtype'",
                 "w");
  expect_refused(st_file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4),
                 "missing field 'shape'", "w");
  expect_refused(st_file(R"({"w":{"dtype":"F32","shape":[1]}})", 4), "missing field 'data_offsets'",
                 "w");
}

TEST(SafetensorsRefuses, EntryWithExtraField) {
  expect_refused(
      st_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"stride":[1]}})", 4),
      "unexpected field 'stride'", "w");
}

TEST(SafetensorsRefuses, DtypeNotAString) {
  expect_refused(st_file(R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", 4),
                 "'dtype' must be a string", "w");
}

TEST(SafetensorsRefuses, ShapeNotAnArray) {
  expect_refused(st_file(R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", 4),
                 "'shape' must be an array", "w");
}

TEST(SafetensorsRefuses, DataOffsetsNotAPair) {
  expect_refused(st_file(R"({"w":)" + entry("F32", "[1]", "[0,4,8]") + "}", 4),
                 "'data_offsets' must be [begin, end]", "w");
}

TEST(SafetensorsRefuses, UnknownDtype) {
  expect_refused(st_file(R"({"w":)" + entry("F7", "[1]", "[0,4]") + "}", 4), "unknown dtype 'F7'",
                 "w");
}

TEST(SafetensorsRefuses, NegativeDimension) {
  expect_refused(st_file(R"({"w":)" + entry("F32", "[2,-1]", "[0,0]") + "}", 0),
                 "negative dimension -1", "w");
}

TEST(SafetensorsRefuses, FloatDimension) {
  expect_refused(st_file(R"({"w":)" + entry("F32", "[1.0]", "[0,4]") + "}", 4),
                 "'shape' must hold non-negative integers", "w");
}

TEST(SafetensorsRefuses, ShapeProductOverflow) {
  expect_refused(st_file(R"({"w":)" + entry("U8", "[4294967296,4294967296]", "[0,0]") + "}", 0),
                 "overflows int64", "w");
}

TEST(SafetensorsRefuses, DimensionAboveInt64) {
  expect_refused(st_file(R"({"w":)" + entry("U8", "[9223372036854775808]", "[0,0]") + "}", 0),
                 "overflows int64", "w");
}

TEST(SafetensorsRefuses, BitSizeOverflow) {
  // 2^62 elements fit int64, but 2^62 x 32 bits does not fit 64 bits.
  expect_refused(st_file(R"({"w":)" + entry("F32", "[4611686018427387904]", "[0,0]") + "}", 0),
                 "overflows", "w");
}

TEST(SafetensorsRefuses, FloatOffset) {
  expect_refused(st_file(R"({"w":)" + entry("F32", "[1]", "[0.0,4]") + "}", 4),
                 "'data_offsets' must hold non-negative integers", "w");
}

TEST(SafetensorsRefuses, NegativeOffset) {
  expect_refused(st_file(R"({"w":)" + entry("F32", "[1]", "[-4,0]") + "}", 4),
                 "'data_offsets' must hold non-negative integers", "w");
}

TEST(SafetensorsRefuses, ByteSizeNotElementsTimesDtypeSize) {
  expect_refused(st_file(R"({"w":)" + entry("F32", "[3]", "[0,8]") + "}", 8),
                 "byte size 8 (data_offsets [0, 8]) != 3 elements x 32 bits / 8 = 12", "w");
}

TEST(SafetensorsRefuses, NotAWholeNumberOfBytes) {
  expect_refused(st_file(R"({"w":)" + entry("F4", "[3]", "[0,2]") + "}", 2),
                 "not a whole number of bytes", "w");
  expect_refused(st_file(R"({"w":)" + entry("F6_E3M2", "[1]", "[0,1]") + "}", 1),
                 "not a whole number of bytes", "w");
}

TEST(SafetensorsRefuses, BeginAfterEnd) {
  expect_refused(st_file(R"({"w":)" + entry("F32", "[1]", "[8,4]") + "}", 8), "begin 8 > end 4",
                 "w");
}

TEST(SafetensorsRefuses, GapBetweenTensors) {
  const std::string header =
      R"({"a":)" + entry("F32", "[1]", "[0,4]") + R"(,"b":)" + entry("F32", "[1]", "[8,12]") + "}";
  expect_refused(st_file(header, 12), "gap in the data buffer", "b");
}

TEST(SafetensorsRefuses, BufferNotStartingAtZero) {
  expect_refused(st_file(R"({"a":)" + entry("F32", "[1]", "[4,8]") + "}", 8),
                 "gap in the data buffer", "a");
}

TEST(SafetensorsRefuses, OverlappingTensors) {
  const std::string header =
      R"({"a":)" + entry("F32", "[2]", "[0,8]") + R"(,"b":)" + entry("F32", "[2]", "[4,12]") + "}";
  expect_refused(st_file(header, 12), "overlaps the previous tensor", "b");
}

TEST(SafetensorsRefuses, BytesAfterTheLastTensor) {
  expect_refused(st_file(R"({"a":)" + entry("F32", "[1]", "[0,4]") + "}", 8),
                 "buffer end != file size");
}

TEST(SafetensorsRefuses, TensorPastEndOfFile) {
  expect_refused(st_file(R"({"a":)" + entry("F32", "[2]", "[0,8]") + "}", 4),
                 "buffer end != file size");
}

TEST(SafetensorsAccepts, ZeroSizeTensorsBetweenOthers) {
  const std::string path = test_dir() + "/zero.safetensors";
  const std::string header =
      R"({"a":)" + entry("F32", "[1]", "[0,4]") + R"(,"z":)" + entry("BF16", "[0,3]", "[4,4]") +
      R"(,"b":)" + entry("I8", "[4]", "[4,8]") + R"(,"e":)" + entry("F32", "[0]", "[8,8]") + "}";
  write_bytes(path, st_file(header, 8));
  const auto file = SafetensorsFile::open(path);
  ASSERT_EQ(file.entries().size(), 4u);
  EXPECT_EQ(file.entries()[0].name, "a");
  EXPECT_EQ(file.entries()[1].name, "z");  // offset order: (4,4) before (4,8)
  EXPECT_EQ(file.entries()[2].name, "b");
  EXPECT_EQ(file.entries()[3].name, "e");
  EXPECT_EQ(file.tensor("z").numel(), 0);
}

// --- atomic_file ------------------------------------------------------------------------------

TEST(AtomicFile, ReplacesContentAndLeavesNoTemporary) {
  const std::string dir = test_dir();
  const std::string path = dir + "/out.txt";
  write_file_atomic(path, "first");
  write_file_atomic(path, "second, longer");
  EXPECT_EQ(read_text_file(path), "second, longer");
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"out.txt"});
}

TEST(AtomicFile, FailingWriterKeepsOldFileAndRemovesTemporary) {
  const std::string dir = test_dir();
  const std::string path = dir + "/out.txt";
  write_file_atomic(path, "old");
  EXPECT_THROW(write_file_atomic(path,
                                 [](const ByteSink& sink) {
                                   sink("partial", 7);
                                   fail("disk caught fire");
                                 }),
               Error);
  EXPECT_EQ(read_text_file(path), "old");
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"out.txt"});
}

TEST(AtomicFile, MissingDirectoryNamesThePath) {
  const std::string path = test_dir() + "/no/such/dir/out.txt";
  try {
    write_file_atomic(path, "x");
    ADD_FAILURE() << "wrote into a missing directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, path);
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos)
        << e.what();
  }
}

TEST(AtomicFile, ReadTextFileMissingNamesThePath) {
  const std::string path = test_dir() + "/missing.txt";
  try {
    read_text_file(path);
    ADD_FAILURE() << "read a missing file";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, path);
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos) << e.what();
  }
}

TEST(AtomicFile, RenameDurableMovesTheFile) {
  const std::string dir = test_dir();
  write_file_atomic(dir + "/a", "content");
  rename_durable(dir + "/a", dir + "/b");
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"b"});
  EXPECT_EQ(read_text_file(dir + "/b"), "content");
  EXPECT_THROW(rename_durable(dir + "/a", dir + "/c"), Error);
}

TEST(JsonStrict, RefusesDuplicateKeysAtAnyDepthAndNamesThePath) {
  ErrorContext where;
  where.file = "x.json";
  EXPECT_NO_THROW(parse_json_strict(R"({"a":{"b":1},"c":[{"b":2},{"b":3}]})", where));
  try {
    parse_json_strict(R"({"a":{"b":1,"b":2}})", where);
    ADD_FAILURE() << "duplicate accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, "x.json");
    EXPECT_EQ(e.context().key, "a");
    EXPECT_NE(std::string(e.what()).find("duplicate key 'b'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_json_strict("{", where), Error);
}

}  // namespace
}  // namespace sq::io
