// Token files: raw little-endian .u16/.u32 streams and NumPy .npy arrays (format 1.0, 2.0, 3.0).
// Files are memory-mapped and decoded byte by byte, so neither the host's endianness nor the
// alignment of the data offset matters.
#include "io/token_file.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <filesystem>
#include <limits>
#include <string_view>

#include "core/error.h"
#include "core/mapped_file.h"
#include "io/atomic_file.h"

namespace sq::io {
namespace {

constexpr std::string_view kNpyMagic = "\x93NUMPY";
constexpr std::uint64_t kMaxId = std::numeric_limits<std::uint32_t>::max();

std::uint64_t load_le(const std::byte* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
  return v;
}

// The element types a token .npy may hold.
struct NpyType {
  std::string_view descr;
  int size;
  bool is_signed;
};
constexpr NpyType kNpyTypes[] = {
    {"<u2", 2, false}, {"<u4", 4, false}, {"<i4", 4, true}, {"<i8", 8, true}};

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
};

// Printable form of header text for error messages (one line, bounded).
std::string printable(std::string_view text) {
  std::string out;
  for (char ch : text.substr(0, 120)) {
    out += std::isprint(static_cast<unsigned char>(ch)) ? ch : '?';
  }
  if (text.size() > 120) out += "...";
  return out;
}

// Parses the Python dict literal NumPy writes, e.g.
// {'descr': '<u2', 'fortran_order': False, 'shape': (8, 2048), }
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  NpyHeader parse() {
    NpyHeader h;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = string();
      expect(':');
      bool* seen = nullptr;
      if (key == "descr") {
        skip_space();
        if (peek() != '\'' && peek() != '"') {
          bad("descr {} is not a plain dtype: structured arrays are not token ids",
              printable(text_.substr(pos_)));
        }
        h.descr = string();
        seen = &seen_descr;
      } else if (key == "fortran_order") {
        h.fortran_order = boolean();
        seen = &seen_order;
      } else if (key == "shape") {
        h.shape = tuple();
        seen = &seen_shape;
      } else {
        bad("unexpected key '{}'", printable(key));
      }
      if (*seen) bad("key '{}' appears twice", key);
      *seen = true;
      skip_space();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != '}') {
        bad("expected ',' or '}}' at offset {}", pos_);
      }
    }
    ++pos_;
    skip_space();
    if (pos_ != text_.size()) bad("unexpected text after the dict at offset {}", pos_);
    if (!seen_descr || !seen_order || !seen_shape) {
      bad("it must have the keys 'descr', 'fortran_order' and 'shape'");
    }
    return h;
  }

 private:
  template <typename... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> format, Args&&... args) const {
    fail(ErrorContext{.file = path_}, "bad .npy header \"{}\": {}", printable(text_),
         fmt::format(format, std::forward<Args>(args)...));
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  void expect(char ch) {
    skip_space();
    if (peek() != ch) bad("expected '{}' at offset {}", ch, pos_);
    ++pos_;
  }
  std::string string() {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') bad("expected a quoted string at offset {}", pos_);
    const std::size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) bad("unterminated string at offset {}", pos_);
    std::string s(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return s;
  }
  bool boolean() {
    skip_space();
    for (const auto& [word, value] : {std::pair{"True", true}, std::pair{"False", false}}) {
      if (text_.substr(pos_).starts_with(word)) {
        pos_ += std::string_view(word).size();
        return value;
      }
    }
    bad("expected True or False at offset {}", pos_);
  }
  std::int64_t integer() {
    skip_space();
    if (!std::isdigit(static_cast<unsigned char>(peek()))) bad("expected a dimension at {}", pos_);
    std::int64_t v = 0;
    while (std::isdigit(static_cast<unsigned char>(peek()))) {
      const int digit = peek() - '0';
      if (v > (std::numeric_limits<std::int64_t>::max() - digit) / 10) bad("dimension too large");
      v = v * 10 + digit;
      ++pos_;
    }
    if (peek() == 'L') ++pos_;  // NumPy under Python 2 wrote longs as 3L
    return v;
  }
  std::vector<std::int64_t> tuple() {
    std::vector<std::int64_t> dims;
    expect('(');
    for (;;) {
      skip_space();
      if (peek() == ')') break;
      dims.push_back(integer());
      skip_space();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != ')') {
        bad("expected ',' or ')' in shape at offset {}", pos_);
      }
    }
    ++pos_;
    return dims;
  }

  std::string_view text_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

std::string shape_text(const std::vector<std::int64_t>& shape) {
  return shape.size() == 1 ? fmt::format("({},)", shape[0])
                           : fmt::format("({})", fmt::join(shape, ", "));
}

TokenData read_raw(const MappedFile& file, int elem) {
  const std::string& path = file.path();
  if (file.size() % elem != 0) {
    fail(ErrorContext{.file = path},
         "size {} bytes is not a multiple of {} (uint{} tokens): "
         "the file is truncated or not a token file",
         file.size(), elem, elem * 8);
  }
  TokenData out;
  const std::size_t n = file.size() / elem;
  out.tokens.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    out.tokens[i] = static_cast<std::uint32_t>(load_le(file.data() + i * elem, elem));
  }
  return out;
}

TokenData read_npy(const MappedFile& file) {
  const std::string& path = file.path();
  const std::byte* bytes = file.data();
  const std::size_t size = file.size();
  const ErrorContext where{.file = path};
  if (size < 10 || std::string_view(reinterpret_cast<const char*>(bytes), 6) != kNpyMagic) {
    fail(where, "not a .npy file: it does not start with \\x93NUMPY ({} bytes)", size);
  }
  const int major = std::to_integer<int>(bytes[6]), minor = std::to_integer<int>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    fail(where, "unsupported .npy format version {}.{} (supported: 1.0, 2.0, 3.0)", major, minor);
  }
  // Version 1.0 stores the header length in 2 bytes, 2.0 and 3.0 in 4.
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  if (size < 8 + len_bytes) fail(where, "truncated .npy header ({} bytes)", size);
  const std::size_t header_len = load_le(bytes + 8, static_cast<int>(len_bytes));
  const std::size_t data_offset = 8 + len_bytes + header_len;
  if (data_offset > size) {
    fail(where, "truncated .npy header: it claims {} bytes, the file has {}", header_len,
         size - 8 - len_bytes);
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes) + 8 + len_bytes, header_len);
  const NpyHeader h = HeaderParser(text, path).parse();

  const auto type = std::find_if(std::begin(kNpyTypes), std::end(kNpyTypes),
                                 [&](const NpyType& t) { return t.descr == h.descr; });
  if (type == std::end(kNpyTypes)) {
    fail(where, "unsupported .npy dtype '{}': token ids must be '<u2', '<u4', '<i4' or '<i8'",
         printable(h.descr));
  }
  if (h.fortran_order) fail(where, "fortran_order True is not supported: save a C-order array");
  if (h.shape.empty() || h.shape.size() > 2) {
    fail(where, "shape {} is not 1-D (a stream) or 2-D (sequences x seq_len)", shape_text(h.shape));
  }
  std::uint64_t count = 1;
  for (const std::int64_t d : h.shape) {
    if (d != 0 && count > std::numeric_limits<std::uint64_t>::max() / 8 / std::uint64_t(d)) {
      fail(where, "shape {} is too large", shape_text(h.shape));
    }
    count *= static_cast<std::uint64_t>(d);
  }
  const std::uint64_t need = count * type->size;
  if (size - data_offset != need) {
    fail(where, "data is {} bytes but shape {} of '{}' needs {}: the file is truncated or corrupt",
         size - data_offset, shape_text(h.shape), h.descr, need);
  }

  TokenData out;
  out.seq_len = h.shape.size() == 2 ? h.shape[1] : 0;
  out.tokens.resize(count);
  const std::byte* data = bytes + data_offset;
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t raw = load_le(data + i * type->size, type->size);
    // Sign-extend signed types so negative ids are seen as negative.
    const int shift = 64 - 8 * type->size;
    const std::int64_t value = type->is_signed ? static_cast<std::int64_t>(raw << shift) >> shift
                                               : static_cast<std::int64_t>(raw);
    if (value < 0 || static_cast<std::uint64_t>(value) > kMaxId) {
      const std::string at = out.seq_len > 0 ? fmt::format(" (sequence {}, position {})",
                                                           i / out.seq_len, i % out.seq_len)
                                             : "";
      fail(where, "token at index {}{} is {}: ids must be in [0, {}]", i, at, value, kMaxId);
    }
    out.tokens[i] = static_cast<std::uint32_t>(value);
  }
  return out;
}

}  // namespace

TokenData read_tokens(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  if (ext != ".u16" && ext != ".u32" && ext != ".npy") {
    fail(ErrorContext{.file = path},
         "unknown token file extension '{}': supported are .u16, .u32 (raw little-endian) and "
         ".npy",
         ext);
  }
  const auto file = MappedFile::open(path);
  if (ext == ".npy") return read_npy(*file);
  return read_raw(*file, ext == ".u16" ? 2 : 4);
}

// Magic, version 1.0, header length and the header dict, padded so that the data starts on a
// 64-byte boundary (NumPy's rule: the whole prefix fills 64-byte blocks and ends with '\n').
std::string npy_prefix(std::string_view descr, const std::vector<std::int64_t>& shape) {
  std::string dims;
  for (std::size_t i = 0; i < shape.size(); ++i) dims += fmt::format("{}, ", shape[i]);
  // "(a, b)" for several dims, "(a,)" for one, as NumPy writes them.
  if (!dims.empty()) dims.resize(dims.size() - (shape.size() > 1 ? 2 : 1));
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
  const std::size_t used = kNpyMagic.size() + 2 + 2 + header.size() + 1;
  header.append((64 - used % 64) % 64, ' ');
  header += '\n';
  std::string prefix(kNpyMagic);
  prefix += '\x01';
  prefix += '\x00';
  prefix += static_cast<char>(header.size() & 0xFF);
  prefix += static_cast<char>(header.size() >> 8);
  return prefix + header;
}

void write_npy_f32(const std::string& path, const Tensor& values) {
  static_assert(std::endian::native == std::endian::little, "'<f4' is written from host memory");
  const std::string prefix = npy_prefix("<f4", values.shape());
  const float* data = values.data<float>();
  write_file_atomic(path, [&](const ByteSink& sink) {
    sink(prefix.data(), prefix.size());
    sink(data, values.nbytes());
  });
}

void write_tokens_npy(const std::string& path, std::span<const std::uint32_t> tokens,
                      std::int64_t n_seq, std::int64_t seq_len) {
  if (n_seq < 0 || seq_len < 0 ||
      (seq_len != 0 && n_seq > std::numeric_limits<std::int64_t>::max() / seq_len) ||
      static_cast<std::uint64_t>(n_seq * seq_len) != tokens.size()) {
    fail(ErrorContext{.file = path}, "cannot write {} tokens as {} sequences of {}", tokens.size(),
         n_seq, seq_len);
  }
  const bool narrow =
      std::all_of(tokens.begin(), tokens.end(), [](std::uint32_t t) { return t <= 0xFFFFu; });
  const int elem = narrow ? 2 : 4;
  const std::string prefix = npy_prefix(narrow ? "<u2" : "<u4", {n_seq, seq_len});

  write_file_atomic(path, [&](const ByteSink& sink) {
    sink(prefix.data(), prefix.size());
    constexpr std::size_t kChunk = 1 << 16;
    std::vector<unsigned char> buffer;
    buffer.reserve(kChunk * elem);
    for (std::size_t begin = 0; begin < tokens.size(); begin += kChunk) {
      const std::size_t end = std::min(tokens.size(), begin + kChunk);
      buffer.clear();
      for (std::size_t i = begin; i < end; ++i) {
        for (int b = 0; b < elem; ++b)
          buffer.push_back(static_cast<unsigned char>(tokens[i] >> (8 * b)));
      }
      sink(buffer.data(), buffer.size());
    }
  });
}

}  // namespace sq::io
