// HDF5 checkpoint files through the HDF5 C API: writer (temp file, fsync, verify, rename),
// reader (whole-file digest first, then HDF5). See the layout in io/checkpoint_store.h.
#include "io/checkpoint_store.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string_view>
#include <utility>

#include "core/fault.h"
#include "io/atomic_file.h"
#include "io/digest.h"

namespace sq::io {
namespace {

constexpr const char* kUserPrefix = "user.";
// ~1 MiB chunks: big enough that per-chunk B-tree entries stay few, small enough that one bad
// bit costs a small re-read and that HDF5's chunk cache (1 MiB by default) holds a chunk.
constexpr std::int64_t kChunkBytes = std::int64_t{1} << 20;
// Verification compares at most this many bytes per read, so checking a multi-GiB hidden-state
// file does not need a second copy of it in memory.
constexpr std::int64_t kVerifyBytes = std::int64_t{64} << 20;
constexpr int kMaxRank = 32;  // H5S_MAX_RANK

// HDF5 is not thread-safe in Debian's serial build: every public entry point holds this lock.
// Recursive because commit() verifies through CheckpointReader's (locking) functions.
std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

using Lock = std::lock_guard<std::recursive_mutex>;

// Once per process, before any other HDF5 call: no printing to stderr, errors become sq::Error.
void init_hdf5() {
  static std::once_flag once;
  std::call_once(once, [] {
    H5open();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  });
}

// The innermost messages of HDF5's error stack ("data error detected by Fletcher32 checksum",
// "truncated file: eof = ..."), most specific first; empty when the stack is empty.
std::string hdf5_detail() {
  std::vector<std::string> messages;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
        auto* out = static_cast<std::vector<std::string>*>(data);
        if (e->desc != nullptr && *e->desc != '\0' && out->size() < 3) out->emplace_back(e->desc);
        return 0;
      },
      &messages);
  H5Eclear2(H5E_DEFAULT);
  std::string detail;
  for (const auto& m : messages) detail += (detail.empty() ? "" : "; ") + m;
  return detail.empty() ? std::string("unknown HDF5 error") : detail;
}

// Owns one hid_t and closes it with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*closer)(hid_t)) : id_(id), close_(closer) {}
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports failure (H5Fclose flushes: a failing close means a bad file).
  herr_t close() {
    const herr_t rc = (id_ >= 0 && close_ != nullptr) ? close_(id_) : 0;
    id_ = -1;
    return rc;
  }

 private:
  void reset() {
    if (id_ >= 0 && close_ != nullptr) close_(id_);
    id_ = -1;
  }
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Throws unless `id` is a valid handle; `what` says what was being done.
Handle check_id(hid_t id, herr_t (*close)(hid_t), const ErrorContext& ctx, std::string_view what) {
  if (id < 0) fail(ctx, "HDF5: {}: {}", what, hdf5_detail());
  return Handle(id, close);
}

void check_rc(herr_t rc, const ErrorContext& ctx, std::string_view what) {
  if (rc < 0) fail(ctx, "HDF5: {}: {}", what, hdf5_detail());
}

struct DTypeInfo {
  hid_t file_type;
  hid_t mem_type;
};

DTypeInfo hdf5_types(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case DType::f16:
    case DType::bf16:
      return {H5T_STD_U16LE, H5T_NATIVE_UINT16};
    case DType::i8:
      return {H5T_STD_I8LE, H5T_NATIVE_INT8};
    case DType::u8:
      return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
    case DType::i32:
      return {H5T_STD_I32LE, H5T_NATIVE_INT32};
    case DType::i64:
      return {H5T_STD_I64LE, H5T_NATIVE_INT64};
  }
  fail("unknown dtype {}", static_cast<int>(dtype));
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (int i = 0; i < kDTypeCount; ++i) {
    const auto dtype = static_cast<DType>(i);
    if (dtype_name(dtype) == name) return dtype;
  }
  return std::nullopt;
}

// "/a/b/c" from "a/b/c" or "/a/b/c"; throws on empty components, "." and "..".
std::string normalize_path(const std::string& path, const ErrorContext& ctx) {
  std::string out;
  std::size_t start = path.starts_with('/') ? 1 : 0;
  if (start >= path.size()) fail(ctx, "empty tensor path \"{}\"", path);
  for (;;) {
    const std::size_t end = std::min(path.find('/', start), path.size());
    const std::string_view part(path.data() + start, end - start);
    if (part.empty() || part == "." || part == "..") {
      fail(ctx, "bad tensor path \"{}\" (empty, \".\" or \"..\" component)", path);
    }
    out += '/';
    out += part;
    if (end == path.size()) break;
    start = end + 1;
  }
  if (out.find('\0') != std::string::npos) fail(ctx, "tensor path contains a NUL byte");
  return out;
}

void check_no_nul(const std::string& s, const ErrorContext& ctx, std::string_view what) {
  if (s.find('\0') != std::string::npos) fail(ctx, "{} contains a NUL byte", what);
}

void check_header(const CheckpointHeader& h, const ErrorContext& ctx) {
  if (h.format_version != kCheckpointFormatVersion) {
    fail(ctx, "unsupported checkpoint format_version {} (this build reads {})", h.format_version,
         kCheckpointFormatVersion);
  }
  if (h.kind != "block" && h.kind != "hidden") {
    fail(ctx, "checkpoint kind is \"{}\", expected \"block\" or \"hidden\"", h.kind);
  }
  if (h.block < -1) fail(ctx, "checkpoint block is {}, expected >= -1", h.block);
  check_no_nul(h.recipe_hash, ctx, "recipe_hash");
  check_no_nul(h.model_fingerprint, ctx, "model_fingerprint");
  for (const auto& s : h.stages) check_no_nul(s, ctx, "a stage name");
}

// --- attributes ------------------------------------------------------------------------------

// A 1-D dataspace of n elements, or a null dataspace when n == 0 (HDF5 1.10 attributes cannot
// have a zero-size simple dataspace portably).
Handle array_space(std::size_t n, const ErrorContext& ctx) {
  if (n == 0) return check_id(H5Screate(H5S_NULL), H5Sclose, ctx, "create null dataspace");
  const hsize_t dims[1] = {n};
  return check_id(H5Screate_simple(1, dims, nullptr), H5Sclose, ctx, "create dataspace");
}

Handle string_type(std::size_t size, const ErrorContext& ctx) {
  Handle type = check_id(H5Tcopy(H5T_C_S1), H5Tclose, ctx, "copy string type");
  check_rc(H5Tset_size(type.get(), std::max<std::size_t>(size, 1)), ctx, "set string size");
  check_rc(H5Tset_strpad(type.get(), H5T_STR_NULLTERM), ctx, "set string padding");
  return type;
}

void write_string_array_attr(hid_t obj, const char* name, const std::vector<std::string>& values,
                             const ErrorContext& ctx) {
  std::size_t width = 1;
  for (const auto& v : values) width = std::max(width, v.size() + 1);
  Handle type = string_type(width, ctx);
  Handle space = array_space(values.size(), ctx);
  Handle attr = check_id(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                         H5Aclose, ctx, fmt::format("create attribute {}", name));
  if (values.empty()) return;
  std::vector<char> buffer(width * values.size(), '\0');
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::memcpy(buffer.data() + i * width, values[i].data(), values[i].size());
  }
  check_rc(H5Awrite(attr.get(), type.get(), buffer.data()), ctx,
           fmt::format("write attribute {}", name));
}

void write_string_attr(hid_t obj, const char* name, const std::string& value,
                       const ErrorContext& ctx) {
  Handle type = string_type(value.size() + 1, ctx);
  Handle space = check_id(H5Screate(H5S_SCALAR), H5Sclose, ctx, "create scalar dataspace");
  Handle attr = check_id(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                         H5Aclose, ctx, fmt::format("create attribute {}", name));
  check_rc(H5Awrite(attr.get(), type.get(), value.c_str()), ctx,
           fmt::format("write attribute {}", name));
}

void write_i64_array_attr(hid_t obj, const char* name, const std::vector<std::int64_t>& values,
                          const ErrorContext& ctx) {
  Handle space = array_space(values.size(), ctx);
  Handle attr =
      check_id(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
               H5Aclose, ctx, fmt::format("create attribute {}", name));
  if (values.empty()) return;
  check_rc(H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()), ctx,
           fmt::format("write attribute {}", name));
}

template <typename T>
void write_scalar_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, T value,
                       const ErrorContext& ctx) {
  Handle space = check_id(H5Screate(H5S_SCALAR), H5Sclose, ctx, "create scalar dataspace");
  Handle attr = check_id(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                         H5Aclose, ctx, fmt::format("create attribute {}", name));
  check_rc(H5Awrite(attr.get(), mem_type, &value), ctx, fmt::format("write attribute {}", name));
}

Handle open_attr(hid_t obj, const char* name, const ErrorContext& ctx) {
  const htri_t exists = H5Aexists(obj, name);
  check_rc(exists, ctx, fmt::format("look up attribute {}", name));
  if (exists == 0) fail(ctx, "attribute {} is missing", name);
  return check_id(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, ctx,
                  fmt::format("open attribute {}", name));
}

// Number of elements of an attribute: 0 for a null dataspace, 1 for a scalar; throws when the
// attribute is more than 1-D.
std::size_t attr_count(hid_t attr, const ErrorContext& ctx, const char* name) {
  Handle space = check_id(H5Aget_space(attr), H5Sclose, ctx, "get attribute dataspace");
  const H5S_class_t cls = H5Sget_simple_extent_type(space.get());
  if (cls == H5S_NULL) return 0;
  if (cls == H5S_SCALAR) return 1;
  if (cls != H5S_SIMPLE || H5Sget_simple_extent_ndims(space.get()) != 1) {
    fail(ctx, "attribute {} is not a 1-D array", name);
  }
  hsize_t dims[1] = {0};
  check_rc(H5Sget_simple_extent_dims(space.get(), dims, nullptr), ctx, "get attribute dims");
  return static_cast<std::size_t>(dims[0]);
}

std::vector<std::string> read_string_array_attr(hid_t obj, const char* name,
                                                const ErrorContext& ctx) {
  Handle attr = open_attr(obj, name, ctx);
  Handle ftype = check_id(H5Aget_type(attr.get()), H5Tclose, ctx, "get attribute type");
  if (H5Tget_class(ftype.get()) != H5T_STRING || H5Tis_variable_str(ftype.get()) != 0) {
    fail(ctx, "attribute {} is not a fixed-length string", name);
  }
  const std::size_t width = H5Tget_size(ftype.get());
  const std::size_t n = attr_count(attr.get(), ctx, name);
  if (width == 0 || width > (std::size_t{1} << 24)) fail(ctx, "attribute {} is malformed", name);
  std::vector<std::string> out;
  if (n == 0) return out;
  Handle mtype = string_type(width, ctx);
  std::vector<char> buffer(width * n + 1, '\0');
  check_rc(H5Aread(attr.get(), mtype.get(), buffer.data()), ctx,
           fmt::format("read attribute {}", name));
  for (std::size_t i = 0; i < n; ++i) {
    const char* s = buffer.data() + i * width;
    out.emplace_back(s, strnlen(s, width));
  }
  return out;
}

std::string read_string_attr(hid_t obj, const char* name, const ErrorContext& ctx) {
  auto values = read_string_array_attr(obj, name, ctx);
  if (values.size() != 1) fail(ctx, "attribute {} is not a single string", name);
  return std::move(values[0]);
}

std::vector<std::int64_t> read_i64_array_attr(hid_t obj, const char* name,
                                              const ErrorContext& ctx) {
  Handle attr = open_attr(obj, name, ctx);
  Handle ftype = check_id(H5Aget_type(attr.get()), H5Tclose, ctx, "get attribute type");
  if (H5Tget_class(ftype.get()) != H5T_INTEGER) fail(ctx, "attribute {} is not integer", name);
  const std::size_t n = attr_count(attr.get(), ctx, name);
  if (n > kMaxRank)
    fail(ctx, "attribute {} has {} elements, at most {} expected", name, n, kMaxRank);
  std::vector<std::int64_t> out(n);
  if (n > 0) {
    check_rc(H5Aread(attr.get(), H5T_NATIVE_INT64, out.data()), ctx,
             fmt::format("read attribute {}", name));
  }
  return out;
}

std::int64_t read_i64_attr(hid_t obj, const char* name, const ErrorContext& ctx) {
  const auto values = read_i64_array_attr(obj, name, ctx);
  if (values.size() != 1) fail(ctx, "attribute {} is not a single integer", name);
  return values[0];
}

// --- files -----------------------------------------------------------------------------------

Handle file_access_plist(const ErrorContext& ctx) {
  Handle fapl = check_id(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, ctx, "create file access plist");
  // STRONG: closing the file closes every object still open in it, so a close really ends all
  // I/O before we fsync and rename.
  check_rc(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), ctx, "set close degree");
  // 1.8+ object headers carry checksums of their own (the 1.6 format's do not).
  check_rc(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST), ctx,
           "set format bounds");
#if H5_VERSION_GE(1, 10, 7)
  // Parallel file systems (Lustre, some NFS mounts) may not support flock(): HDF5 1.10 would then
  // refuse to open. Nothing else opens a checkpoint while it is written, so locking is optional.
  check_rc(H5Pset_file_locking(fapl.get(), true, true), ctx, "set file locking");
#endif
  return fapl;
}

struct DatasetLayout {
  std::vector<hsize_t> dims, maxdims, chunk;
};

// Native shape for tensors with >= 1 dim and >= 1 element, 1-D otherwise (see the header).
DatasetLayout layout_for(const Tensor& t) {
  DatasetLayout l;
  if (t.ndim() == 0 || t.numel() == 0) {
    l.dims = {static_cast<hsize_t>(t.numel())};
    l.maxdims = {t.numel() == 0 ? H5S_UNLIMITED : static_cast<hsize_t>(t.numel())};
    l.chunk = {1};
    return l;
  }
  for (auto d : t.shape()) l.dims.push_back(static_cast<hsize_t>(d));
  l.maxdims = l.dims;
  l.chunk.assign(l.dims.size(), 1);
  // Fill the chunk from the last dim backwards up to kChunkBytes: whole rows where they fit.
  const auto budget =
      std::max<std::int64_t>(1, kChunkBytes / static_cast<std::int64_t>(dtype_size(t.dtype())));
  std::int64_t inner = 1;
  for (int d = t.ndim() - 1; d >= 0; --d) {
    const std::int64_t c = std::clamp<std::int64_t>(budget / inner, 1, t.shape()[d]);
    l.chunk[static_cast<std::size_t>(d)] = static_cast<hsize_t>(c);
    inner *= c;
  }
  return l;
}

void write_dataset(hid_t file, const std::string& path, const Tensor& t,
                   const ErrorContext& file_ctx) {
  ErrorContext ctx = file_ctx;
  ctx.tensor = path;
  const DatasetLayout l = layout_for(t);
  const int rank = static_cast<int>(l.dims.size());
  Handle space = check_id(H5Screate_simple(rank, l.dims.data(), l.maxdims.data()), H5Sclose, ctx,
                          "create dataspace");
  Handle dcpl = check_id(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, ctx, "create dataset plist");
  check_rc(H5Pset_chunk(dcpl.get(), rank, l.chunk.data()), ctx, "set chunking");
  check_rc(H5Pset_fletcher32(dcpl.get()), ctx, "set fletcher32 filter");
  // Every element is written: filling chunks with zeros first would be wasted I/O.
  check_rc(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), ctx, "set fill time");
  Handle lcpl = check_id(H5Pcreate(H5P_LINK_CREATE), H5Pclose, ctx, "create link plist");
  check_rc(H5Pset_create_intermediate_group(lcpl.get(), 1), ctx, "set intermediate groups");
  const DTypeInfo types = hdf5_types(t.dtype());
  Handle dset = check_id(H5Dcreate2(file, path.c_str(), types.file_type, space.get(), lcpl.get(),
                                    dcpl.get(), H5P_DEFAULT),
                         H5Dclose, ctx, "create dataset");
  write_string_attr(dset.get(), "dtype", std::string(dtype_name(t.dtype())), ctx);
  write_i64_array_attr(dset.get(), "shape", t.shape(), ctx);
  if (t.numel() > 0) {
    check_rc(H5Dwrite(dset.get(), types.mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.bytes()), ctx,
             "write dataset");
  }
  check_rc(dset.close(), ctx, "close dataset");
}

void fsync_file(const std::string& file, const ErrorContext& ctx) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ctx, "cannot open {} to fsync it: {}", file, std::strerror(errno));
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail(ctx, "cannot fsync {}: {}", file, std::strerror(err));
  }
  ::close(fd);
}

// Creates an empty temporary file next to `path` (O_EXCL: never another writer's) and returns
// its name. HDF5 then truncates it; the reservation keeps two writers off one name.
std::string reserve_temp(const std::string& path, const ErrorContext& ctx) {
  const std::filesystem::path p(path);
  const std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") fail(ctx, "not a file path");
  const auto dir = p.parent_path().empty() ? std::filesystem::path(".") : p.parent_path();
  const std::string base = (dir / ("." + name + ".tmp.")).string() + std::to_string(::getpid());
  std::string temp = base;
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp = attempt == 0 ? base : base + "." + std::to_string(attempt);
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      ::close(fd);
      return temp;
    }
    if (errno != EEXIST) break;
  }
  fail(ctx, "cannot create temporary file {}: {}", temp, std::strerror(errno));
}

}  // namespace

struct CheckpointReader::File {
  Handle id;
  ~File() {
    Lock lock(hdf5_mutex());
    id.close();
  }
};

// --- writer ----------------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(CheckpointHeader header) : header_(std::move(header)) {
  check_header(header_, {});
}

void CheckpointWriter::put(const std::string& path, const Tensor& tensor) {
  const std::string p = normalize_path(path, ErrorContext{.tensor = path});
  const ErrorContext ctx{.tensor = p};
  if (!tensor.defined()) fail(ctx, "cannot put an undefined tensor");
  if (tensor.ndim() > kMaxRank) fail(ctx, "{} has more than {} dims", tensor.describe(), kMaxRank);
  if (tensors_.contains(p)) fail(ctx, "tensor put twice");
  // A path cannot be a dataset and a group at once: "/a" and "/a/b" conflict.
  for (const auto& [other, t] : tensors_) {
    if (other.starts_with(p + "/") || p.starts_with(other + "/")) {
      fail(ctx, "conflicts with tensor {} (a path cannot be both a tensor and a group)", other);
    }
  }
  tensors_.emplace(p, tensor);
}

void CheckpointWriter::put_attribute(const std::string& key, const std::string& value) {
  const ErrorContext ctx{.key = key};
  if (key.empty()) fail(ctx, "empty attribute key");
  check_no_nul(key, ctx, "attribute key");
  check_no_nul(value, ctx, "attribute value");
  attributes_[key] = value;
}

std::string CheckpointWriter::commit(const std::string& path) const {
  Lock lock(hdf5_mutex());
  init_hdf5();
  const ErrorContext ctx{.file = path};
  const std::string temp = reserve_temp(path, ctx);
  try {
    {
      Handle fapl = file_access_plist(ctx);
      Handle file = check_id(H5Fcreate(temp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                             H5Fclose, ctx, fmt::format("create {}", temp));
      const hid_t f = file.get();
      write_scalar_attr<std::int32_t>(f, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32,
                                      header_.format_version, ctx);
      write_string_attr(f, "kind", header_.kind, ctx);
      write_string_attr(f, "recipe_hash", header_.recipe_hash, ctx);
      write_string_attr(f, "model_fingerprint", header_.model_fingerprint, ctx);
      write_string_array_attr(f, "stages", header_.stages, ctx);
      write_scalar_attr<std::int64_t>(f, "block", H5T_STD_I64LE, H5T_NATIVE_INT64, header_.block,
                                      ctx);
      for (const auto& [key, value] : attributes_) {
        write_string_attr(f, (kUserPrefix + key).c_str(), value, ctx);
      }
      std::size_t written = 0;
      for (const auto& [p, t] : tensors_) {
        write_dataset(f, p, t, ctx);
        // Crash tests: die with half the datasets written and the file still open.
        if (++written == (tensors_.size() + 1) / 2) fault::point("checkpoint.mid_write");
      }
      check_rc(H5Fflush(f, H5F_SCOPE_LOCAL), ctx, fmt::format("flush {}", temp));
      check_rc(file.close(), ctx, fmt::format("close {}", temp));
    }
    fsync_file(temp, ctx);

    // Re-open and verify: what the reader will see is exactly what was put.
    {
      const CheckpointReader reader = CheckpointReader::open(temp, "");
      if (reader.header() != header_) fail(ctx, "verify {}: header differs after re-open", temp);
      if (reader.attributes() != attributes_) {
        fail(ctx, "verify {}: attributes differ after re-open", temp);
      }
      if (reader.entries_.size() != tensors_.size()) {
        fail(ctx, "verify {}: {} tensors after re-open, {} put", temp, reader.entries_.size(),
             tensors_.size());
      }
      std::vector<std::byte> buffer;
      for (const auto& [p, t] : tensors_) {
        const ErrorContext tctx{.file = path, .tensor = p};
        if (!reader.contains(p)) fail(tctx, "verify {}: tensor missing after re-open", temp);
        if (reader.dtype_of(p) != t.dtype() || reader.shape_of(p) != t.shape()) {
          fail(tctx, "verify {}: dtype or shape differs after re-open", temp);
        }
        if (t.numel() == 0) continue;
        const std::int64_t rows = t.ndim() == 0 ? 1 : t.shape()[0];
        const auto row_bytes = static_cast<std::int64_t>(t.nbytes()) / rows;
        const std::int64_t step = std::max<std::int64_t>(1, kVerifyBytes / row_bytes);
        for (std::int64_t r = 0; r < rows; r += step) {
          const std::int64_t n = std::min(step, rows - r);
          buffer.resize(static_cast<std::size_t>(n * row_bytes));
          reader.read_rows(p, r, n, buffer.data());
          if (std::memcmp(buffer.data(), t.bytes() + r * row_bytes, buffer.size()) != 0) {
            fail(tctx, "verify {}: data read back differs from what was written", temp);
          }
        }
      }
    }
    const std::string digest = sha256_file_hex(temp);
    fault::point("checkpoint.before_rename");  // written, fsynced and verified; not yet in place
    rename_durable(temp, path);
    return digest;
  } catch (const Error& e) {
    ::unlink(temp.c_str());
    // Errors from helpers that only know the temp name still name the target file.
    throw e.with_file(path);
  } catch (...) {
    ::unlink(temp.c_str());
    throw;
  }
}

// --- reader ----------------------------------------------------------------------------------

CheckpointReader CheckpointReader::open(const std::string& path,
                                        const std::string& expected_digest) {
  const ErrorContext ctx{.file = path};
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(ctx, "cannot open: {}", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(ctx, "not a regular file");
  // Before HDF5 parses anything: fletcher32 covers chunk data only, and HDF5 is not hardened
  // against corrupt metadata, so a file that fails its digest is never handed to it.
  if (!expected_digest.empty()) {
    std::string expected = expected_digest;
    std::transform(expected.begin(), expected.end(), expected.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const std::string actual = sha256_file_hex(path);
    if (actual != expected) {
      fail(ctx, "digest mismatch: SHA-256 is {}, the manifest expects {} (corrupt or replaced)",
           actual, expected);
    }
  }

  Lock lock(hdf5_mutex());
  init_hdf5();
  CheckpointReader r;
  r.path_ = path;
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0) fail(ctx, "not an HDF5 file ({} bytes)", st.st_size);
  check_rc(is_hdf5, ctx, "probe file");
  Handle fapl = file_access_plist(ctx);
  r.file_ = std::make_shared<File>();
  r.file_->id = check_id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose, ctx,
                         "open (truncated or corrupt file?)");
  const hid_t f = r.file_->id.get();

  // Root group attributes: the version first, so a newer file says so rather than "missing x".
  r.header_.format_version = static_cast<int>(read_i64_attr(f, "format_version", ctx));
  if (r.header_.format_version != kCheckpointFormatVersion) {
    fail(ctx, "unsupported checkpoint format_version {} (this build reads {})",
         r.header_.format_version, kCheckpointFormatVersion);
  }
  r.header_.kind = read_string_attr(f, "kind", ctx);
  r.header_.recipe_hash = read_string_attr(f, "recipe_hash", ctx);
  r.header_.model_fingerprint = read_string_attr(f, "model_fingerprint", ctx);
  r.header_.stages = read_string_array_attr(f, "stages", ctx);
  r.header_.block = read_i64_attr(f, "block", ctx);
  check_header(r.header_, ctx);

  // User attributes: every root attribute named user.<key>.
  std::vector<std::string> attr_names;
  hsize_t idx = 0;
  check_rc(H5Aiterate2(
               f, H5_INDEX_NAME, H5_ITER_INC, &idx,
               [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
                 static_cast<std::vector<std::string>*>(data)->emplace_back(name);
                 return 0;
               },
               &attr_names),
           ctx, "list root attributes");
  for (const auto& name : attr_names) {
    if (name.starts_with(kUserPrefix)) {
      r.attributes_[name.substr(std::strlen(kUserPrefix))] = read_string_attr(f, name.c_str(), ctx);
    }
  }

  // Every dataset, recursively (H5Lvisit: its callback signature is the same in 1.10 and 1.12+).
  struct Visit {
    std::vector<std::string> datasets;
  } visit;
  check_rc(H5Lvisit(
               f, H5_INDEX_NAME, H5_ITER_INC,
               [](hid_t group, const char* name, const H5L_info_t* info, void* data) -> herr_t {
                 auto* v = static_cast<Visit*>(data);
                 if (info->type != H5L_TYPE_HARD) return 0;  // never written by us; ignored
                 const hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
                 if (obj < 0) return -1;
                 const bool is_dataset = H5Iget_type(obj) == H5I_DATASET;
                 H5Oclose(obj);
                 if (is_dataset) v->datasets.push_back(std::string("/") + name);
                 return 0;
               },
               &visit),
           ctx, "list datasets");
  for (const auto& p : visit.datasets) {
    const ErrorContext tctx{.file = path, .tensor = p};
    Handle dset = check_id(H5Dopen2(f, p.c_str(), H5P_DEFAULT), H5Dclose, tctx, "open dataset");
    const std::string dtype_str = read_string_attr(dset.get(), "dtype", tctx);
    const auto dtype = dtype_from_name(dtype_str);
    if (!dtype) fail(tctx, "unknown dtype attribute \"{}\"", dtype_str);
    Entry e{*dtype, read_i64_array_attr(dset.get(), "shape", tctx)};
    std::int64_t numel = 0;
    try {
      numel = shape_numel(e.shape);
    } catch (const Error&) {
      fail(tctx, "bad shape attribute {}", shape_str(e.shape));
    }
    Handle ftype = check_id(H5Dget_type(dset.get()), H5Tclose, tctx, "get dataset type");
    if (H5Tequal(ftype.get(), hdf5_types(*dtype).file_type) <= 0) {
      fail(tctx, "stored element type does not match dtype attribute {}", dtype_str);
    }
    Handle space = check_id(H5Dget_space(dset.get()), H5Sclose, tctx, "get dataset dataspace");
    const int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 1 || rank > kMaxRank) fail(tctx, "dataset has rank {}", rank);
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    check_rc(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), tctx, "get dims");
    // Native layout stores the shape itself; scalars and empty tensors are 1-D of numel.
    const bool native = !e.shape.empty() && numel > 0;
    bool ok = true;
    if (native) {
      ok = dims.size() == e.shape.size();
      for (std::size_t i = 0; ok && i < dims.size(); ++i) {
        ok = dims[i] == static_cast<hsize_t>(e.shape[i]);
      }
    } else {
      ok = dims.size() == 1 && dims[0] == static_cast<hsize_t>(numel);
    }
    if (!ok) fail(tctx, "dataset extent disagrees with shape attribute {}", shape_str(e.shape));
    r.entries_.emplace(p, std::move(e));
  }
  return r;
}

const CheckpointReader::Entry& CheckpointReader::entry(const std::string& path) const {
  const std::string p = normalize_path(path, ErrorContext{.file = path_, .tensor = path});
  const auto it = entries_.find(p);
  if (it == entries_.end()) fail(ErrorContext{.file = path_, .tensor = p}, "no such tensor");
  return it->second;
}

bool CheckpointReader::contains(const std::string& path) const {
  try {
    return entries_.contains(normalize_path(path, {}));
  } catch (const Error&) {
    return false;
  }
}

DType CheckpointReader::dtype_of(const std::string& path) const { return entry(path).dtype; }
const Shape& CheckpointReader::shape_of(const std::string& path) const { return entry(path).shape; }

std::vector<std::string> CheckpointReader::paths() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [p, e] : entries_) out.push_back(p);
  return out;
}

std::string CheckpointReader::attribute(const std::string& key) const {
  const auto it = attributes_.find(key);
  if (it == attributes_.end()) fail(ErrorContext{.file = path_, .key = key}, "no such attribute");
  return it->second;
}

bool CheckpointReader::has_attribute(const std::string& key) const {
  return attributes_.contains(key);
}

void CheckpointReader::read_rows(const std::string& path, std::int64_t first_row, std::int64_t rows,
                                 std::byte* dst) const {
  const std::string p = normalize_path(path, ErrorContext{.file = path_, .tensor = path});
  const Entry& e = entry(p);
  const ErrorContext ctx{.file = path_, .tensor = p};
  Lock lock(hdf5_mutex());
  Handle dset =
      check_id(H5Dopen2(file_->id.get(), p.c_str(), H5P_DEFAULT), H5Dclose, ctx, "open dataset");
  Handle fspace = check_id(H5Dget_space(dset.get()), H5Sclose, ctx, "get dataset dataspace");
  const int rank = H5Sget_simple_extent_ndims(fspace.get());
  SQ_CHECK(rank >= 1 && rank <= kMaxRank, "rank {}", rank);
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  check_rc(H5Sget_simple_extent_dims(fspace.get(), dims.data(), nullptr), ctx, "get dims");
  SQ_CHECK(first_row >= 0 && rows >= 1 && static_cast<hsize_t>(first_row + rows) <= dims[0],
           "rows [{}, {}) of {}", first_row, first_row + rows, dims[0]);
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = static_cast<hsize_t>(first_row);
  count[0] = static_cast<hsize_t>(rows);
  check_rc(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                               nullptr),
           ctx, "select rows");
  Handle mspace = check_id(H5Screate_simple(rank, count.data(), nullptr), H5Sclose, ctx,
                           "create memory dataspace");
  if (H5Dread(dset.get(), hdf5_types(e.dtype).mem_type, mspace.get(), fspace.get(), H5P_DEFAULT,
              dst) < 0) {
    fail(ctx, "cannot read tensor data (a chunk failed its fletcher32 checksum?): {}",
         hdf5_detail());
  }
}

Tensor CheckpointReader::get(const std::string& path) const {
  const Entry& e = entry(path);
  Tensor t = Tensor::zeros(e.dtype, e.shape);
  if (t.numel() == 0) return t;
  const std::int64_t rows = t.ndim() == 0 ? 1 : t.shape()[0];
  read_rows(path, 0, rows, t.mutable_bytes());
  return t;
}

}  // namespace sq::io
