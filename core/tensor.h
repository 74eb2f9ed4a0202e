// Tensor: a dtype, a row-major shape and bytes that are either owned (64-byte aligned heap) or a
// read-only view into memory kept alive by a shared owner (usually a MappedFile).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace sq {

using Shape = std::vector<std::int64_t>;

std::string shape_str(const Shape& shape);
// Product of the dims; throws on a negative dim or on int64 overflow.
std::int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;

  // Owning, zero-filled.
  static Tensor zeros(DType dtype, Shape shape);
  // Owning copy of f32 values.
  static Tensor from_f32(std::span<const float> values, Shape shape);
  // Read-only view of `data`; `owner` keeps the memory alive while any copy of the view exists.
  static Tensor view(DType dtype, Shape shape, const std::byte* data,
                     std::shared_ptr<const void> owner);

  bool defined() const { return defined_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  std::int64_t dim(int i) const;  // negative i counts from the end
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }
  bool writable() const { return writable_; }

  const std::byte* bytes() const { return bytes_; }
  std::byte* mutable_bytes();

  // Typed access; the dtype must match T exactly.
  template <typename T>
  const T* data() const {
    check_dtype(dtype_of<T>::value);
    return reinterpret_cast<const T*>(bytes_);
  }
  template <typename T>
  T* mutable_data() {
    check_dtype(dtype_of<T>::value);
    return reinterpret_cast<T*>(mutable_bytes());
  }
  template <typename T>
  std::span<const T> values() const {
    return {data<T>(), static_cast<std::size_t>(numel_)};
  }
  // 16-bit float payloads (f16/bf16) have no C++ type: read them as raw uint16.
  const std::uint16_t* half_bits() const;

  // Converting copy (always owning). Floating types convert exactly where representable and
  // round to nearest even otherwise; integer -> f32 is exact up to 2^24.
  Tensor to(DType dtype) const;
  Tensor to_f32() const { return to(DType::f32); }
  Tensor clone() const { return to(dtype_); }
  // Same bytes, new shape of the same element count.
  Tensor reshape(Shape shape) const;

  std::string describe() const;  // e.g. "bf16[4096, 11008]"

 private:
  void check_dtype(DType expected) const;

  DType dtype_ = DType::f32;
  Shape shape_;
  std::int64_t numel_ = 0;
  std::byte* bytes_ = nullptr;
  bool writable_ = false;
  bool defined_ = false;
  std::shared_ptr<const void> owner_;
};

}  // namespace sq
