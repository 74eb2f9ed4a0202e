// Tests for core/tensor, core/error and core/mapped_file: construction, views and their owners,
// typed access rules, dtype conversions (checked against hand-computed bit patterns, not against
// the library's own converters), shape arithmetic limits, error message composition, and mmap.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/mapped_file.h"
#include "core/tensor.h"

namespace sq {
namespace {

namespace fs = std::filesystem;

// what() of the sq::Error thrown by f ("" and a test failure when nothing or something else is
// thrown), so tests can check that messages name what they should.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-sq::Error: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// --- Tensor construction ---------------------------------------------------------------------

TEST(Tensor, DefaultIsUndefined) {
  const Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(t.numel(), 0);
}

TEST(Tensor, ZerosIsZeroFilledWritableAndAligned) {
  const struct {
    DType dtype;
    Shape shape;
    std::int64_t numel;
  } cases[] = {{DType::f32, {3, 5}, 15}, {DType::bf16, {7}, 7}, {DType::f16, {1, 1, 3}, 3},
               {DType::i8, {13}, 13},    {DType::u8, {65}, 65}, {DType::i32, {2, 0, 4}, 0},
               {DType::i64, {}, 1},      {DType::f32, {0}, 0}};
  for (const auto& c : cases) {
    Tensor t = Tensor::zeros(c.dtype, c.shape);
    EXPECT_TRUE(t.defined());
    EXPECT_TRUE(t.writable());
    EXPECT_EQ(t.dtype(), c.dtype);
    EXPECT_EQ(t.shape(), c.shape);
    EXPECT_EQ(t.ndim(), static_cast<int>(c.shape.size()));
    EXPECT_EQ(t.numel(), c.numel);
    EXPECT_EQ(t.nbytes(), static_cast<std::size_t>(c.numel) * dtype_size(c.dtype));
    ASSERT_NE(t.bytes(), nullptr) << t.describe();
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.bytes()) % 64, 0u) << t.describe();
    for (std::size_t i = 0; i < t.nbytes(); ++i) ASSERT_EQ(t.bytes()[i], std::byte{0});
    EXPECT_EQ(t.mutable_bytes(), t.bytes());
  }
  // Many allocations of odd sizes: each one 64-byte aligned.
  for (std::int64_t n = 1; n < 300; n += 7) {
    const Tensor t = Tensor::zeros(DType::u8, {n});
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.bytes()) % 64, 0u) << n;
  }
}

TEST(Tensor, ZerosRefusesByteCountsThatOverflow) {
  // numel fits int64, but numel * dtype_size does not fit size_t: must throw, never hand out a
  // tensor whose nbytes() wrapped around (here to 0 bytes) over a tiny allocation.
  EXPECT_THROW(Tensor::zeros(DType::f32, {std::int64_t{1} << 62}), Error);
  EXPECT_THROW(Tensor::zeros(DType::i64, {(std::int64_t{1} << 61) - 1}), Error);
}

TEST(Tensor, FromF32CopiesValues) {
  std::vector<float> v = {1.5f, -2.0f, 0.0f, 3.25f, 1e-30f, -7.0f};
  Tensor t = Tensor::from_f32(v, {2, 3});
  EXPECT_EQ(t.dtype(), DType::f32);
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  ASSERT_EQ(t.values<float>().size(), v.size());
  for (std::size_t i = 0; i < v.size(); ++i) EXPECT_EQ(t.values<float>()[i], v[i]);
  EXPECT_NE(t.data<float>(), v.data());  // a copy, not a view
  v[0] = 99.0f;
  EXPECT_EQ(t.data<float>()[0], 1.5f);
  EXPECT_THROW(Tensor::from_f32(v, {7}), Error);
  EXPECT_THROW(Tensor::from_f32(v, {2, 2}), Error);
  EXPECT_TRUE(contains(error_of([&] { Tensor::from_f32(v, {5}); }), "[5]"));
}

TEST(Tensor, DescribeAndDim) {
  EXPECT_EQ(Tensor::zeros(DType::bf16, {4096, 11008}).describe(), "bf16[4096, 11008]");
  EXPECT_EQ(Tensor::zeros(DType::f32, {}).describe(), "f32[]");
  EXPECT_EQ(Tensor::zeros(DType::i64, {0}).describe(), "i64[0]");
  EXPECT_EQ(shape_str({1, 2, 3}), "[1, 2, 3]");
  const Tensor t = Tensor::zeros(DType::u8, {2, 3, 5});
  EXPECT_EQ(t.dim(0), 2);
  EXPECT_EQ(t.dim(2), 5);
  EXPECT_EQ(t.dim(-1), 5);
  EXPECT_EQ(t.dim(-3), 2);
  EXPECT_THROW(t.dim(3), Error);
  EXPECT_THROW(t.dim(-4), Error);
}

TEST(Tensor, TypedAccessChecksDType) {
  Tensor t = Tensor::zeros(DType::f32, {4});
  EXPECT_NO_THROW(t.data<float>());
  EXPECT_THROW(t.data<std::int32_t>(), Error);
  EXPECT_THROW(t.mutable_data<std::uint8_t>(), Error);
  EXPECT_THROW(t.half_bits(), Error);
  const std::string msg = error_of([&] { t.data<std::int64_t>(); });
  EXPECT_TRUE(contains(msg, "f32[4]")) << msg;
  EXPECT_TRUE(contains(msg, "i64")) << msg;
  EXPECT_NO_THROW(Tensor::zeros(DType::f16, {2}).half_bits());
  EXPECT_NO_THROW(Tensor::zeros(DType::bf16, {2}).half_bits());
  EXPECT_THROW(Tensor::zeros(DType::bf16, {2}).data<float>(), Error);
}

// --- Views and owners ------------------------------------------------------------------------

TEST(Tensor, ViewIsZeroCopyAndReadOnly) {
  auto buf = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4, 5, 6});
  const auto* raw = reinterpret_cast<const std::byte*>(buf->data());
  Tensor v = Tensor::view(DType::f32, {2, 3}, raw, buf);
  EXPECT_TRUE(v.defined());
  EXPECT_FALSE(v.writable());
  EXPECT_EQ(v.bytes(), raw);
  EXPECT_EQ(v.data<float>()[4], 5.0f);
  EXPECT_THROW(v.mutable_bytes(), Error);
  EXPECT_THROW(v.mutable_data<float>(), Error);
  EXPECT_TRUE(contains(error_of([&] { v.mutable_bytes(); }), "read-only")) << "names the cause";
  (*buf)[4] = 50.0f;  // the view sees the owner's memory, not a copy
  EXPECT_EQ(v.data<float>()[4], 50.0f);
  // Reshapes of a view stay read-only views of the same bytes.
  Tensor r = v.reshape({3, 2});
  EXPECT_FALSE(r.writable());
  EXPECT_EQ(r.bytes(), raw);
  EXPECT_THROW(r.mutable_data<float>(), Error);
  // Converting or cloning a view gives a writable owning copy.
  Tensor c = v.clone();
  EXPECT_TRUE(c.writable());
  EXPECT_NE(c.bytes(), raw);
  EXPECT_EQ(c.data<float>()[4], 50.0f);
  c.mutable_data<float>()[0] = -1.0f;
  EXPECT_EQ((*buf)[0], 1.0f);
}

TEST(Tensor, ViewKeepsOwnerAlive) {
  bool freed = false;
  auto* storage = new std::vector<std::uint16_t>(8, 0x3C00);
  std::shared_ptr<const void> owner(storage, [&freed](const void* p) {
    freed = true;
    delete static_cast<const std::vector<std::uint16_t>*>(p);
  });
  const auto* raw = reinterpret_cast<const std::byte*>(storage->data());
  Tensor v = Tensor::view(DType::f16, {8}, raw, owner);
  owner.reset();
  EXPECT_FALSE(freed) << "the view must hold the owner";
  {
    Tensor copy = v;  // NOLINT(performance-unnecessary-copy-initialization)
    Tensor reshaped = v.reshape({2, 4});
    v = Tensor();
    EXPECT_FALSE(freed) << "copies and reshapes must hold the owner too";
    EXPECT_EQ(copy.half_bits()[7], 0x3C00);
    EXPECT_EQ(reshaped.to_f32().data<float>()[7], 1.0f);
  }
  EXPECT_TRUE(freed) << "the owner is released with the last view";
}

TEST(Tensor, ReshapeKeepsBytes) {
  Tensor t = Tensor::zeros(DType::i32, {2, 6});
  t.mutable_data<std::int32_t>()[11] = 42;
  Tensor r = t.reshape({3, 2, 2});
  EXPECT_EQ(r.shape(), (Shape{3, 2, 2}));
  EXPECT_EQ(r.bytes(), t.bytes());
  EXPECT_EQ(r.data<std::int32_t>()[11], 42);
  EXPECT_TRUE(r.writable());
  EXPECT_EQ(t.reshape({12}).numel(), 12);
  EXPECT_THROW(t.reshape({5, 2}), Error);
  EXPECT_THROW(t.reshape({-12}), Error);
  EXPECT_THROW(t.reshape({-2, -6}), Error);  // product is 12, but negative dims are invalid
  const std::string msg = error_of([&] { t.reshape({13}); });
  EXPECT_TRUE(contains(msg, "[2, 6]") && contains(msg, "[13]")) << msg;
}

// --- Shape arithmetic ------------------------------------------------------------------------

TEST(Shape, NumelLimits) {
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  EXPECT_EQ(shape_numel({}), 1);
  EXPECT_EQ(shape_numel({0}), 0);
  EXPECT_EQ(shape_numel({3, 0, kMax}), 0);
  EXPECT_EQ(shape_numel({kMax}), kMax);
  EXPECT_EQ(shape_numel({kMax, 1}), kMax);
  EXPECT_EQ(shape_numel({3037000499, 3037000499}), 3037000499LL * 3037000499LL);  // < 2^63
  EXPECT_THROW(shape_numel({3037000500, 3037000500}), Error);                     // > 2^63 - 1
  EXPECT_THROW(shape_numel({kMax, 2}), Error);
  EXPECT_THROW(shape_numel({std::int64_t{1} << 32, std::int64_t{1} << 31}), Error);
  EXPECT_THROW(shape_numel({1 << 16, 1 << 16, 1 << 16, 1 << 16}), Error);  // 2^64
  EXPECT_THROW(shape_numel({-1}), Error);
  EXPECT_THROW(shape_numel({4, -1}), Error);
  EXPECT_THROW(shape_numel({0, -1}), Error);  // a zero before does not hide the negative dim
  EXPECT_TRUE(contains(error_of([] { shape_numel({2, -3}); }), "[2, -3]"));
  EXPECT_TRUE(contains(error_of([&] { shape_numel({kMax, 2}); }), "overflow"));
  EXPECT_THROW(Tensor::zeros(DType::f32, {2, -1}), Error);
  EXPECT_THROW(Tensor::view(DType::f32, {-1}, nullptr, nullptr), Error);
}

// --- Conversions -----------------------------------------------------------------------------

// Expected half / bfloat16 bit patterns, worked out by hand from the formats.
struct ConvCase {
  float f32;
  std::uint16_t f16, bf16;
};
const ConvCase kConv[] = {
    {1.0f, 0x3C00, 0x3F80},
    {-2.0f, 0xC000, 0xC000},
    {0.5f, 0x3800, 0x3F00},
    {0.0f, 0x0000, 0x0000},
    {-0.0f, 0x8000, 0x8000},
    {65504.0f, 0x7BFF, 0x4780},         // bf16: 65504 rounds up to 65536
    {0x1p-24f, 0x0001, 0x3380},         // smallest half subnormal
    {1.0f + 0x1p-11f, 0x3C00, 0x3F80},  // half tie -> even (1.0)
    {1.0f + 0x3p-11f, 0x3C02, 0x3F80},  // half tie -> even (1 + 2^-9)
    {1.0f + 0x1p-8f, 0x3C04, 0x3F80},   // bf16 tie -> even (1.0)
    {1.0f + 0x3p-8f, 0x3C0C, 0x3F82},   // bf16 tie -> even (1 + 2^-6)
    {1e5f, 0x7C00, 0x47C3},             // half overflows to Inf; bf16 99840
    {-3.140625f, 0xC248, 0xC049},
    {INFINITY, 0x7C00, 0x7F80},
};

TEST(Tensor, ConvertF32ToHalfAndBack) {
  std::vector<float> v;
  for (const auto& c : kConv) v.push_back(c.f32);
  const auto n = static_cast<std::int64_t>(v.size());
  const Tensor t = Tensor::from_f32(v, {n});
  const Tensor h = t.to(DType::f16), b = t.to(DType::bf16);
  ASSERT_EQ(h.dtype(), DType::f16);
  ASSERT_EQ(b.dtype(), DType::bf16);
  EXPECT_EQ(h.shape(), t.shape());
  EXPECT_TRUE(h.writable());
  const Tensor h32 = h.to_f32(), b32 = b.to_f32();
  for (std::size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(h.half_bits()[i], kConv[i].f16) << "f16 of " << v[i];
    EXPECT_EQ(b.half_bits()[i], kConv[i].bf16) << "bf16 of " << v[i];
    // Widening back is exact: the value of the stored bits (high half of a float for bf16).
    EXPECT_EQ(float_bits(b32.data<float>()[i]), std::uint32_t(kConv[i].bf16) << 16);
  }
  EXPECT_EQ(h32.data<float>()[5], 65504.0f);
  EXPECT_EQ(h32.data<float>()[6], 0x1p-24f);
  EXPECT_EQ(h32.data<float>()[8], 1.0f + 0x1p-9f);
  EXPECT_TRUE(std::signbit(h32.data<float>()[4]));
  EXPECT_EQ(h32.data<float>()[11], INFINITY);
}

TEST(Tensor, ConvertBetweenHalfFormats) {
  Tensor h = Tensor::zeros(DType::f16, {4});
  auto* hb = reinterpret_cast<std::uint16_t*>(h.mutable_bytes());
  hb[0] = 0x3C01;  // 1 + 2^-10: below bf16's precision -> 1.0
  hb[1] = 0x7BFF;  // 65504 -> bf16 65536 (one rounding from the exact value)
  hb[2] = 0x0001;  // 2^-24: exact in bf16 (bf16 has float's exponent range)
  hb[3] = 0xFC00;  // -Inf
  const Tensor b = h.to(DType::bf16);
  EXPECT_EQ(b.half_bits()[0], 0x3F80);
  EXPECT_EQ(b.half_bits()[1], 0x4780);
  EXPECT_EQ(b.half_bits()[2], 0x3380);
  EXPECT_EQ(b.half_bits()[3], 0xFF80);
  Tensor b2 = Tensor::zeros(DType::bf16, {3});
  auto* bb = reinterpret_cast<std::uint16_t*>(b2.mutable_bytes());
  bb[0] = 0x3F81;  // 1 + 2^-7: exact in half
  bb[1] = 0x7149;  // ~1e30: overflows half
  bb[2] = 0x2F80;  // 2^-32: underflows half to 0
  const Tensor h2 = b2.to(DType::f16);
  EXPECT_EQ(h2.half_bits()[0], 0x3C08);
  EXPECT_EQ(h2.half_bits()[1], 0x7C00);
  EXPECT_EQ(h2.half_bits()[2], 0x0000);
  // Same dtype: an owning copy.
  const Tensor same = h.to(DType::f16);
  EXPECT_NE(same.bytes(), h.bytes());
  EXPECT_EQ(std::memcmp(same.bytes(), h.bytes(), h.nbytes()), 0);
}

TEST(Tensor, ConvertIntegersToF32Exactly) {
  Tensor i8 = Tensor::zeros(DType::i8, {3});
  const std::int8_t i8v[] = {-128, 127, -1};
  std::memcpy(i8.mutable_data<std::int8_t>(), i8v, sizeof i8v);
  Tensor u8 = Tensor::zeros(DType::u8, {2});
  u8.mutable_data<std::uint8_t>()[0] = 255;
  u8.mutable_data<std::uint8_t>()[1] = 128;
  Tensor i32 = Tensor::zeros(DType::i32, {4});
  const std::int32_t i32v[] = {-(1 << 24), 1 << 24, 16777215, -123456};
  std::memcpy(i32.mutable_data<std::int32_t>(), i32v, sizeof i32v);
  Tensor i64 = Tensor::zeros(DType::i64, {3});
  const std::int64_t i64v[] = {-(1LL << 24), (1LL << 24) - 1, std::int64_t{1} << 40};
  std::memcpy(i64.mutable_data<std::int64_t>(), i64v, sizeof i64v);

  const Tensor a = i8.to_f32(), b = u8.to_f32(), c = i32.to_f32(), d = i64.to_f32();
  EXPECT_EQ(a.data<float>()[0], -128.0f);
  EXPECT_EQ(a.data<float>()[1], 127.0f);
  EXPECT_EQ(a.data<float>()[2], -1.0f);
  EXPECT_EQ(b.data<float>()[0], 255.0f);  // u8 must not be read as signed
  EXPECT_EQ(b.data<float>()[1], 128.0f);
  EXPECT_EQ(c.data<float>()[0], -16777216.0f);
  EXPECT_EQ(c.data<float>()[1], 16777216.0f);
  EXPECT_EQ(c.data<float>()[2], 16777215.0f);
  EXPECT_EQ(c.data<float>()[3], -123456.0f);
  EXPECT_EQ(d.data<float>()[0], -16777216.0f);
  EXPECT_EQ(d.data<float>()[1], 16777215.0f);
  EXPECT_EQ(d.data<float>()[2], 0x1p40f);  // powers of two stay exact beyond 2^24
  EXPECT_EQ(d.shape(), i64.shape());
  // Conversions to integer types are not supported and say so.
  const Tensor f = Tensor::zeros(DType::f32, {2});
  EXPECT_THROW(f.to(DType::i32), Error);
  EXPECT_THROW(i8.to(DType::f16), Error);
  EXPECT_TRUE(contains(error_of([&] { f.to(DType::i8); }), "f32 -> i8"));
  // Same-dtype integer copy works.
  EXPECT_EQ(i32.clone().data<std::int32_t>()[3], -123456);
}

TEST(Tensor, ConvertEmptyTensor) {
  const Tensor e = Tensor::zeros(DType::f32, {0, 5});
  const Tensor h = e.to(DType::f16);
  EXPECT_EQ(h.shape(), (Shape{0, 5}));
  EXPECT_EQ(h.numel(), 0);
  EXPECT_EQ(h.to(DType::bf16).to_f32().numel(), 0);
}

// --- Errors ----------------------------------------------------------------------------------

TEST(ErrorContext, PlainMessage) {
  const Error e("something broke");
  EXPECT_STREQ(e.what(), "something broke");
  EXPECT_EQ(e.message(), "something broke");
  EXPECT_EQ(e.context().rank, -1);
}

TEST(ErrorContext, FieldsAppearInOrderFileKeyTensorRank) {
  const Error e("bad scale", ErrorContext{.file = "model-00001.safetensors",
                                          .key = "recipe.bits",
                                          .tensor = "layers.0.q_proj.weight",
                                          .rank = 3});
  const std::string w = e.what();
  const auto pf = w.find("model-00001.safetensors"), pk = w.find("recipe.bits"),
             pt = w.find("layers.0.q_proj.weight"), pr = w.find("rank 3"), pm = w.find("bad scale");
  ASSERT_NE(pf, std::string::npos) << w;
  ASSERT_NE(pk, std::string::npos) << w;
  ASSERT_NE(pt, std::string::npos) << w;
  ASSERT_NE(pr, std::string::npos) << w;
  ASSERT_NE(pm, std::string::npos) << w;
  EXPECT_LT(pf, pk) << w;
  EXPECT_LT(pk, pt) << w;
  EXPECT_LT(pt, pr) << w;
  EXPECT_LT(pr, pm) << w;
  EXPECT_EQ(e.message(), "bad scale");  // message() is the bare message
  // Rank 0 is a real rank and is printed; unset fields print nothing.
  const std::string w0 = Error("m", ErrorContext{.rank = 0}).what();
  EXPECT_TRUE(contains(w0, "rank 0")) << w0;
  const std::string wt = Error("m", ErrorContext{.tensor = "w"}).what();
  EXPECT_FALSE(contains(wt, "rank")) << wt;
  EXPECT_FALSE(contains(wt, "key")) << wt;
}

TEST(ErrorContext, WithKeepsFieldsAlreadySet) {
  const Error inner("bad dtype", ErrorContext{.tensor = "inner.weight"});
  const Error outer =
      inner.with_tensor("outer.weight").with_file("a.safetensors").with_rank(2).with_key("k");
  EXPECT_EQ(outer.context().tensor, "inner.weight");  // the innermost, most precise name wins
  EXPECT_EQ(outer.context().file, "a.safetensors");
  EXPECT_EQ(outer.context().rank, 2);
  EXPECT_EQ(outer.context().key, "k");
  EXPECT_EQ(outer.message(), "bad dtype");
  const std::string w = outer.what();
  EXPECT_TRUE(contains(w, "inner.weight")) << w;
  EXPECT_FALSE(contains(w, "outer.weight")) << w;
  EXPECT_LT(w.find("a.safetensors"), w.find("inner.weight")) << w;
  EXPECT_LT(w.find("rank 2"), w.find("bad dtype")) << w;
  // Later calls do not overwrite either.
  const Error again = outer.with_file("b").with_rank(5).with_key("other");
  EXPECT_EQ(again.context().file, "a.safetensors");
  EXPECT_EQ(again.context().rank, 2);
  EXPECT_EQ(again.context().key, "k");
  EXPECT_STREQ(again.what(), outer.what());
  // with_rank(0) on an unset rank sets it (0 is a valid rank).
  EXPECT_EQ(Error("x").with_rank(0).context().rank, 0);
  // The original is unchanged (with_* returns a copy).
  EXPECT_TRUE(inner.context().file.empty());
}

TEST(ErrorContext, FailAndCheckThrowFormattedErrors) {
  const std::string w =
      error_of([] { fail(ErrorContext{.file = "f.json"}, "expected {} got {}", 3, "x"); });
  EXPECT_EQ(w, "f.json: expected 3 got x");
  EXPECT_EQ(error_of([] { fail("n = {}", 7); }), "n = 7");
  const int two = 2;
  const std::string c = error_of([&] { SQ_CHECK(two == 3, "two is {}", two); });
  EXPECT_TRUE(contains(c, "two == 3")) << c;
  EXPECT_TRUE(contains(c, "two is 2")) << c;
  EXPECT_NO_THROW(SQ_CHECK(two == 2, "fine"));
}

// --- MappedFile ------------------------------------------------------------------------------

std::string scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir =
      std::string(SQ_TEST_TMP_DIR) + "/core/" + info->test_suite_name() + "." + info->name();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(MappedFile, MapsFileContents) {
  const std::string path = scratch_dir() + "/data.bin";
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::string content(3 * page + 17, '\0');
  for (std::size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 31 + 7);
  std::ofstream(path, std::ios::binary).write(content.data(), std::streamsize(content.size()));

  auto file = MappedFile::open(path);
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->path(), path);
  ASSERT_EQ(file->size(), content.size());
  EXPECT_EQ(std::memcmp(file->data(), content.data(), content.size()), 0);
  // Dropping the pages is only advice: the bytes read back the same afterwards.
  file->release_pages(0, file->size());
  file->release_pages(page / 2, page);  // partial pages are skipped, not an error
  file->release_pages(file->size() + 100, 10);
  EXPECT_EQ(std::memcmp(file->data(), content.data(), content.size()), 0);

  // A tensor viewing the mapping keeps it alive after the last MappedFile pointer is gone.
  const Tensor t = Tensor::view(DType::u8, {16}, file->data() + page, file);
  std::weak_ptr<const MappedFile> weak = file;
  file.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_EQ(std::memcmp(t.bytes(), content.data() + page, 16), 0);
}

TEST(MappedFile, EmptyFileMapsToSizeZero) {
  const std::string path = scratch_dir() + "/empty.bin";
  std::ofstream(path, std::ios::binary).flush();
  const auto file = MappedFile::open(path);
  EXPECT_EQ(file->size(), 0u);
  file->release_pages(0, 100);  // nothing mapped: a no-op
}

TEST(MappedFile, MissingFileAndDirectoryErrorsNameThePath) {
  const std::string dir = scratch_dir();
  const std::string missing = dir + "/does_not_exist.safetensors";
  try {
    MappedFile::open(missing);
    ADD_FAILURE() << "opening a missing file did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, missing);
    EXPECT_TRUE(contains(e.what(), missing)) << e.what();
  }
  try {
    MappedFile::open(dir);
    ADD_FAILURE() << "opening a directory did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, dir);
    EXPECT_TRUE(contains(e.what(), dir)) << e.what();
  }
}

}  // namespace
}  // namespace sq
