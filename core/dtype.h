// Element types of tensors ShardQuant stores and computes with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace sq {

enum class DType : std::uint8_t { f32, f16, bf16, i8, u8, i32, i64 };
inline constexpr int kDTypeCount = 7;

std::size_t dtype_size(DType dtype);
// Our short name ("f32", "bf16", ...).
std::string_view dtype_name(DType dtype);
// The safetensors spelling ("F32", "BF16", ...) and its inverse (nullopt when unsupported).
std::string_view safetensors_dtype_name(DType dtype);
std::optional<DType> dtype_from_safetensors(std::string_view name);
bool is_floating(DType dtype);

// C++ element type -> DType, for typed access to tensors.
template <typename T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<std::int8_t> {
  static constexpr DType value = DType::i8;
};
template <>
struct dtype_of<std::uint8_t> {
  static constexpr DType value = DType::u8;
};
template <>
struct dtype_of<std::int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of<std::int64_t> {
  static constexpr DType value = DType::i64;
};

}  // namespace sq
