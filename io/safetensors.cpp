// safetensors reader (mmap + strict validation of every format rule) and atomic writer.
#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "io/atomic_file.h"

namespace sq::io {
namespace {

using nlohmann::json;

// Every dtype the safetensors format defines, with its width in bits.
struct DtypeBits {
  std::string_view name;
  std::uint64_t bits;
};
constexpr DtypeBits kSafetensorsDtypes[] = {
    {"BOOL", 8},    {"U8", 8},   {"I8", 8},      {"F8_E5M2", 8}, {"F8_E4M3", 8},
    {"F8_E8M0", 8}, {"F4", 4},   {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"I16", 16},
    {"U16", 16},    {"F16", 16}, {"BF16", 16},   {"I32", 32},    {"U32", 32},
    {"F32", 32},    {"F64", 64}, {"I64", 64},    {"U64", 64},    {"C64", 64},
};

std::optional<std::uint64_t> dtype_bits(std::string_view name) {
  for (const auto& d : kSafetensorsDtypes) {
    if (d.name == name) return d.bits;
  }
  return std::nullopt;
}

// Offset of the first byte that breaks UTF-8 (overlong forms, surrogates and code points above
// U+10FFFF included), or nullopt when the text is valid.
std::optional<std::size_t> first_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::nullopt;
}

// Where the first duplicate object key was seen: the keys of the enclosing objects, outermost
// first, and the duplicate itself.
struct DuplicateKey {
  bool found = false;
  std::vector<std::string> path;
  std::string key;
};

// nlohmann keeps the last of two equal keys without a word; its parser callback sees every key
// (unescaped, so "a\u0062" and "ab" compare equal) and lets us keep one key set per open object.
json parse_recording_duplicates(std::string_view text, DuplicateKey& dup) {
  struct Frame {
    bool object;
    std::set<std::string, std::less<>> keys;
    std::string last_key;
  };
  std::vector<Frame> frames;
  const json::parser_callback_t callback = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        frames.push_back({true, {}, {}});
        break;
      case json::parse_event_t::array_start:
        frames.push_back({false, {}, {}});
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        frames.pop_back();
        break;
      case json::parse_event_t::key: {
        Frame& top = frames.back();
        const auto& key = parsed.get_ref<const std::string&>();
        if (!top.keys.insert(key).second && !dup.found) {
          dup.found = true;
          for (std::size_t i = 0; i + 1 < frames.size(); ++i) {
            if (frames[i].object) dup.path.push_back(frames[i].last_key);
          }
          dup.key = key;
        }
        top.last_key = key;
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  return json::parse(text.begin(), text.end(), callback);
}

// nlohmann quotes the last token it read, which in a hostile header can be megabytes long.
std::string short_what(const std::exception& e) {
  std::string what = e.what();
  if (what.size() > 300) what = what.substr(0, 300) + "...";
  return what;
}

// A JSON value for an error message, cut short (a hostile shape can hold a million dims).
std::string brief(const json& v) {
  std::string text = v.dump();
  if (text.size() > 120) text = text.substr(0, 120) + "...";
  return text;
}

// A JSON number that is an integer >= 0 (floats such as 4.0 and negatives are refused).
std::optional<std::uint64_t> as_index(const json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
    return static_cast<std::uint64_t>(v.get<std::int64_t>());
  }
  return std::nullopt;
}

void parse_metadata(const json& value, const std::string& path,
                    std::map<std::string, std::string>& out) {
  if (!value.is_object()) {
    fail(ErrorContext{.file = path, .key = "__metadata__"},
         "'__metadata__' must be a map of string to string, found a JSON {}", value.type_name());
  }
  for (const auto& [k, v] : value.items()) {
    if (!v.is_string()) {
      fail(ErrorContext{.file = path, .key = "__metadata__." + k},
           "'__metadata__' must be a map of string to string: the value is a JSON {}",
           v.type_name());
    }
    out.emplace(k, v.get<std::string>());
  }
}

SafetensorsEntry parse_entry(const std::string& name, const json& value, const std::string& path) {
  const ErrorContext at{.file = path, .tensor = name};
  if (!value.is_object()) {
    fail(at, "entry must be a JSON object, found a JSON {}", value.type_name());
  }
  for (const auto& [k, v] : value.items()) {
    if (k != "dtype" && k != "shape" && k != "data_offsets") {
      fail(at, "unexpected field '{}' in the entry (only dtype, shape, data_offsets)", k);
    }
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(field)) fail(at, "entry is missing field '{}'", field);
  }

  SafetensorsEntry e;
  e.name = name;
  const json& dtype = value["dtype"];
  if (!dtype.is_string()) fail(at, "'dtype' must be a string, found a JSON {}", dtype.type_name());
  e.dtype_name = dtype.get<std::string>();
  const auto bits = dtype_bits(e.dtype_name);
  if (!bits) fail(at, "unknown dtype '{}'", e.dtype_name);
  e.dtype = dtype_from_safetensors(e.dtype_name);

  const json& shape = value["shape"];
  if (!shape.is_array()) fail(at, "'shape' must be an array, found a JSON {}", shape.type_name());
  std::uint64_t numel = 1;
  constexpr auto kMaxDim = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  for (const json& d : shape) {
    if (d.is_number_integer() && !d.is_number_unsigned() && d.get<std::int64_t>() < 0) {
      fail(at, "negative dimension {} in shape {}", d.get<std::int64_t>(), brief(shape));
    }
    const auto dim = as_index(d);
    if (!dim) fail(at, "'shape' must hold non-negative integers, found {}", brief(d));
    if (*dim > kMaxDim) fail(at, "dimension {} in shape {} overflows int64", *dim, brief(shape));
    if (*dim != 0 && numel > kMaxDim / *dim) {
      fail(at, "element count of shape {} overflows int64", brief(shape));
    }
    numel *= *dim;
    e.shape.push_back(static_cast<std::int64_t>(*dim));
  }

  const json& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    fail(at, "'data_offsets' must be [begin, end], found {}", brief(offsets));
  }
  const auto begin = as_index(offsets[0]), end = as_index(offsets[1]);
  if (!begin || !end) {
    fail(at, "'data_offsets' must hold non-negative integers, found {}", brief(offsets));
  }
  e.begin = *begin;
  e.end = *end;
  if (e.begin > e.end) fail(at, "data_offsets begin {} > end {}", e.begin, e.end);

  if (numel != 0 && *bits > std::numeric_limits<std::uint64_t>::max() / numel) {
    fail(at, "bit size of shape {} x {} overflows", brief(shape), e.dtype_name);
  }
  const std::uint64_t total_bits = numel * *bits;
  if (total_bits % 8 != 0) {
    fail(at, "{} elements of {} ({} bits each) are not a whole number of bytes", numel,
         e.dtype_name, *bits);
  }
  if (e.end - e.begin != total_bits / 8) {
    fail(at, "byte size {} (data_offsets [{}, {}]) != {} elements x {} bits / 8 = {}",
         e.end - e.begin, e.begin, e.end, numel, *bits, total_bits / 8);
  }
  return e;
}

}  // namespace

json parse_json_strict(std::string_view text, const ErrorContext& where) {
  DuplicateKey dup;
  json parsed;
  try {
    parsed = parse_recording_duplicates(text, dup);
  } catch (const json::exception& e) {
    fail(where, "invalid JSON: {}", short_what(e));
  }
  if (dup.found) {
    ErrorContext at = where;
    std::string path = at.key;
    for (const auto& k : dup.path) path += (path.empty() ? "" : ".") + k;
    at.key = path;
    fail(at, "duplicate key '{}'", dup.key);
  }
  return parsed;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.file_ = MappedFile::open(path);
  const ErrorContext at{.file = path};
  const std::size_t size = f.file_->size();
  if (size < 8) fail(at, "file is {} bytes, shorter than the 8-byte header length", size);

  const auto* base = reinterpret_cast<const unsigned char*>(f.file_->data());
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];  // little-endian whatever the host
  if (n > kSafetensorsMaxHeader) {
    fail(at, "header size {} exceeds the limit of {} bytes", n, kSafetensorsMaxHeader);
  }
  if (n > size - 8) {
    fail(at, "header of {} bytes runs past the end of the file ({} bytes)", n, size);
  }
  f.header_size_ = n;

  const std::string_view text(reinterpret_cast<const char*>(base) + 8, n);
  if (const auto bad = first_invalid_utf8(text)) {
    fail(at, "header is not valid UTF-8 (bad byte at file offset {})", *bad + 8);
  }
  DuplicateKey dup;
  json header;
  try {
    header = parse_recording_duplicates(text, dup);
  } catch (const json::exception& e) {
    fail(at, "header is not valid JSON: {}", short_what(e));
  }
  if (!header.is_object()) {
    fail(at, "header is not a JSON object but a JSON {}", header.type_name());
  }
  if (dup.found) {
    if (dup.path.empty()) {
      fail(ErrorContext{.file = path, .tensor = dup.key}, "duplicate key in the header");
    }
    ErrorContext where{.file = path};
    if (dup.path.front() == "__metadata__") {
      where.key = "__metadata__";
    } else {
      where.tensor = dup.path.front();
    }
    fail(where, "duplicate key '{}' in the header", dup.key);
  }

  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      parse_metadata(value, path, f.metadata_);
    } else {
      f.entries_.push_back(parse_entry(name, value, path));
    }
  }

  // The entries, in offset order, must cover the buffer exactly: no gap, no overlap, no tail.
  std::stable_sort(f.entries_.begin(), f.entries_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const std::uint64_t buffer_size = size - 8 - n;
  std::uint64_t expected = 0;
  for (const auto& e : f.entries_) {
    const ErrorContext et{.file = path, .tensor = e.name};
    if (e.begin > expected) {
      fail(et, "gap in the data buffer: data starts at {} but the previous tensor ends at {}",
           e.begin, expected);
    }
    if (e.begin < expected) {
      fail(et, "overlaps the previous tensor: data starts at {} but the previous one ends at {}",
           e.begin, expected);
    }
    expected = e.end;
  }
  if (expected != buffer_size) {
    fail(at,
         "buffer end != file size: the tensors end at byte {} of the data buffer but the file "
         "holds {} bytes after the header",
         expected, buffer_size);
  }
  for (std::size_t i = 0; i < f.entries_.size(); ++i) f.index_.emplace(f.entries_[i].name, i);
  return f;
}

bool SafetensorsFile::contains(std::string_view name) const {
  return index_.find(name) != index_.end();
}

const SafetensorsEntry& SafetensorsFile::entry(std::string_view name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    fail(ErrorContext{.file = path(), .tensor = std::string(name)}, "no such tensor in the file");
  }
  return entries_[it->second];
}

Tensor SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsEntry& e = entry(name);
  if (!e.dtype) {
    fail(ErrorContext{.file = path(), .tensor = e.name},
         "dtype {} is not one ShardQuant holds (F32, F16, BF16, I8, U8, I32, I64)", e.dtype_name);
  }
  const std::byte* data = file_->data() + data_offset() + e.begin;
  // The format does not align tensors; typed access through a misaligned pointer is undefined
  // (and vectorised loops can fault), so such a tensor is copied instead.
  if (reinterpret_cast<std::uintptr_t>(data) % dtype_size(*e.dtype) != 0) {
    Tensor copy = Tensor::zeros(*e.dtype, e.shape);
    std::memcpy(copy.mutable_bytes(), data, copy.nbytes());
    return copy;
  }
  return Tensor::view(*e.dtype, e.shape, data, file_);
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the entries in the caller's order (plain json would sort them).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string_view> seen;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const ErrorContext at{.file = path, .tensor = name};
    if (name == "__metadata__") fail(at, "the name __metadata__ is reserved for the metadata");
    if (!seen.insert(name).second) fail(at, "duplicate tensor name");
    if (!t.defined()) fail(at, "cannot write an undefined tensor");
    const std::uint64_t bytes = t.nbytes();
    header[name] = {{"dtype", std::string(safetensors_dtype_name(t.dtype()))},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    fail(ErrorContext{.file = path}, "cannot encode the header: {}", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the buffer starts 8-byte aligned

  write_file_atomic(path, [&](const ByteSink& sink) {
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(text.size() >> (8 * i));
    sink(length, 8);
    sink(text.data(), text.size());
    for (const auto& [name, t] : tensors) {
      if (t.nbytes() > 0) sink(t.bytes(), t.nbytes());
    }
  });
}

}  // namespace sq::io
