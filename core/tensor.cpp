#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/half.h"

namespace sq {

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) {
    if (d < 0) fail("negative dimension in shape {}", shape_str(shape));
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d)
      fail("element count of shape {} overflows int64", shape_str(shape));
    n *= d;
  }
  return n;
}

namespace {
struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
}  // namespace

Tensor Tensor::zeros(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  if (static_cast<std::uint64_t>(t.numel_) > (std::uint64_t(1) << 62) / dtype_size(dtype))
    fail("a {} tensor of shape {} is too large to allocate", dtype_name(dtype),
         shape_str(t.shape_));
  const std::size_t bytes = std::max<std::size_t>(t.nbytes(), 1);
  const std::size_t rounded = (bytes + 63) / 64 * 64;  // aligned_alloc needs a multiple
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr)
    fail("out of memory allocating {} bytes for a {} tensor", rounded, t.describe());
  std::memset(p, 0, rounded);
  t.owner_ = std::shared_ptr<void>(p, AlignedFree{});
  t.bytes_ = static_cast<std::byte*>(p);
  t.writable_ = true;
  t.defined_ = true;
  return t;
}

Tensor Tensor::from_f32(std::span<const float> values, Shape shape) {
  Tensor t = zeros(DType::f32, std::move(shape));
  if (static_cast<std::size_t>(t.numel_) != values.size())
    fail("from_f32: {} values do not fill shape {}", values.size(), shape_str(t.shape_));
  std::memcpy(t.bytes_, values.data(), values.size_bytes());
  return t;
}

Tensor Tensor::view(DType dtype, Shape shape, const std::byte* data,
                    std::shared_ptr<const void> owner) {
  Tensor t;
  t.dtype_ = dtype;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  // A view never writes through `data`; writable_ = false guards that.
  t.bytes_ = const_cast<std::byte*>(data);
  t.owner_ = std::move(owner);
  t.defined_ = true;
  return t;
}

std::int64_t Tensor::dim(int i) const {
  const int n = ndim();
  const int j = i < 0 ? i + n : i;
  if (j < 0 || j >= n) fail("dim({}) of a {}-d tensor {}", i, n, describe());
  return shape_[static_cast<std::size_t>(j)];
}

std::byte* Tensor::mutable_bytes() {
  if (!writable_) fail("tensor {} is a read-only view", describe());
  return bytes_;
}

const std::uint16_t* Tensor::half_bits() const {
  if (dtype_ != DType::f16 && dtype_ != DType::bf16)
    fail("half_bits() of a {} tensor", dtype_name(dtype_));
  return reinterpret_cast<const std::uint16_t*>(bytes_);
}

void Tensor::check_dtype(DType expected) const {
  if (dtype_ != expected) fail("tensor {} accessed as {}", describe(), dtype_name(expected));
}

Tensor Tensor::reshape(Shape shape) const {
  if (shape_numel(shape) != numel_) fail("cannot reshape {} to {}", describe(), shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

std::string Tensor::describe() const { return std::string(dtype_name(dtype_)) + shape_str(shape_); }

namespace {
// Reads element i of any dtype as double (exact for every dtype we hold except large i64).
double load_as_double(const std::byte* p, DType d, std::size_t i) {
  switch (d) {
    case DType::f32:
      return reinterpret_cast<const float*>(p)[i];
    case DType::f16:
      return f16_to_f32(reinterpret_cast<const std::uint16_t*>(p)[i]);
    case DType::bf16:
      return bf16_to_f32(reinterpret_cast<const std::uint16_t*>(p)[i]);
    case DType::i8:
      return reinterpret_cast<const std::int8_t*>(p)[i];
    case DType::u8:
      return reinterpret_cast<const std::uint8_t*>(p)[i];
    case DType::i32:
      return reinterpret_cast<const std::int32_t*>(p)[i];
    case DType::i64:
      return static_cast<double>(reinterpret_cast<const std::int64_t*>(p)[i]);
  }
  return 0;
}
}  // namespace

Tensor Tensor::to(DType dtype) const {
  Tensor out = zeros(dtype, shape_);
  const auto n = static_cast<std::size_t>(numel_);
  if (dtype == dtype_) {
    if (n) std::memcpy(out.bytes_, bytes_, nbytes());
    return out;
  }
  // Fast exact paths for the conversions the forward pass uses on every block.
  if (dtype == DType::f32 && dtype_ == DType::f16) {
    f16_to_f32(half_bits(), reinterpret_cast<float*>(out.bytes_), n);
  } else if (dtype == DType::f32 && dtype_ == DType::bf16) {
    bf16_to_f32(half_bits(), reinterpret_cast<float*>(out.bytes_), n);
  } else if (dtype == DType::f16 && dtype_ == DType::f32) {
    f32_to_f16(data<float>(), reinterpret_cast<std::uint16_t*>(out.bytes_), n);
  } else if (dtype == DType::bf16 && dtype_ == DType::f32) {
    f32_to_bf16(data<float>(), reinterpret_cast<std::uint16_t*>(out.bytes_), n);
  } else if (is_floating(dtype) && is_floating(dtype_)) {
    return to_f32().to(dtype);  // f16 <-> bf16 through f32 (exact widening, then one rounding)
  } else if (dtype == DType::f32) {
    auto* o = reinterpret_cast<float*>(out.bytes_);
    for (std::size_t i = 0; i < n; ++i)
      o[i] = static_cast<float>(load_as_double(bytes_, dtype_, i));
  } else {
    fail("conversion {} -> {} is not supported", dtype_name(dtype_), dtype_name(dtype));
  }
  return out;
}

}  // namespace sq
