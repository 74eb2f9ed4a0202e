// MpiWorld, Communicator, abort_all and MpiReducer (see mpi_world.h).
#include "pipeline/mpi_world.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>
#include <utility>

namespace sq::pipeline {

namespace {

constexpr std::int64_t max_mpi_count = std::numeric_limits<int>::max();

int world_rank_or_minus_one() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

}  // namespace

void check_mpi(int code, const char* what, int rank) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    fmt::format_to_n(text, sizeof(text) - 1, "MPI error code {}", code);
  }
  throw sq::Error(fmt::format("{} failed: {}", what, text), {.rank = rank});
}

// ---- Communicator ----

Communicator::Communicator(MPI_Comm comm) : comm_(comm) {
  SQ_CHECK(comm != MPI_COMM_NULL, "null communicator");
  const int world_rank = world_rank_or_minus_one();
  // Errors must come back as codes we turn into sq::Error; the default handler aborts without
  // saying which rank or which call.
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler",
            world_rank);
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank", world_rank);
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size", world_rank);
}

Communicator::~Communicator() {
  // No check: a destructor must not throw, and MPI may already be tearing down after an error.
  if (comm_ != MPI_COMM_NULL && comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
}

Communicator::Communicator(Communicator&& other) noexcept
    : comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      rank_(other.rank_),
      size_(other.size_),
      chunk_bytes_(other.chunk_bytes_),
      wait_hook_(std::move(other.wait_hook_)) {}

Communicator& Communicator::operator=(Communicator&& other) noexcept {
  if (this != &other) {
    if (comm_ != MPI_COMM_NULL && comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    rank_ = other.rank_;
    size_ = other.size_;
    chunk_bytes_ = other.chunk_bytes_;
    wait_hook_ = std::move(other.wait_hook_);
  }
  return *this;
}

Communicator Communicator::split(int color, int key) const {
  MPI_Comm out = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, color, key, &out), "MPI_Comm_split", world_rank_or_minus_one());
  Communicator result(out);
  result.chunk_bytes_ = chunk_bytes_;
  result.wait_hook_ = wait_hook_;
  return result;
}

Communicator Communicator::split_node() const {
  MPI_Comm out = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &out),
            "MPI_Comm_split_type", world_rank_or_minus_one());
  return Communicator(out);
}

Communicator Communicator::dup() const {
  MPI_Comm out = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(comm_, &out), "MPI_Comm_dup", world_rank_or_minus_one());
  Communicator result(out);
  result.chunk_bytes_ = chunk_bytes_;
  return result;
}

void Communicator::barrier() const {
  if (!wait_hook_) {
    check_mpi(MPI_Barrier(comm_), "MPI_Barrier", world_rank_or_minus_one());
    return;
  }
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Ibarrier(comm_, &request), "MPI_Ibarrier", world_rank_or_minus_one());
  wait(request, Pending::collective, "MPI_Ibarrier");
}

namespace {
std::atomic<int> g_abandoned{0};
}

int Communicator::abandoned_requests() { return g_abandoned.load(); }

void Communicator::wait(MPI_Request& request, Pending kind, const char* what,
                        MPI_Status* status) const {
  const int rank = world_rank_or_minus_one();
  if (!wait_hook_) {
    check_mpi(MPI_Wait(&request, status), what, rank);
    return;
  }
  for (;;) {
    int done = 0;
    check_mpi(MPI_Test(&request, &done, status), what, rank);
    if (done) return;
    try {
      wait_hook_();
    } catch (...) {
      if (kind == Pending::recv) {  // cancelling a receive is clean
        MPI_Cancel(&request);
        MPI_Wait(&request, MPI_STATUS_IGNORE);
      } else {  // a send or a collective cannot be taken back
        if (kind == Pending::send) MPI_Request_free(&request);
        ++g_abandoned;
      }
      throw;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

void Communicator::set_chunk_bytes(std::int64_t bytes) {
  if (bytes <= 0)
    fail({.rank = world_rank_or_minus_one()}, "chunk size must be > 0, got {}", bytes);
  chunk_bytes_ = bytes;
}

std::int64_t Communicator::chunk_elements(std::size_t elem_bytes) const {
  const std::int64_t by_bytes = chunk_bytes_ / static_cast<std::int64_t>(elem_bytes);
  return std::clamp<std::int64_t>(by_bytes, 1, max_mpi_count);
}

void Communicator::send_bytes(const void* data, std::int64_t count, std::size_t elem_bytes,
                              MPI_Datatype type, int dest, Tag tag) const {
  if (count < 0) fail({.rank = world_rank_or_minus_one()}, "send: negative count {}", count);
  const std::int64_t chunk = chunk_elements(elem_bytes);
  const auto* bytes = static_cast<const unsigned char*>(data);
  // A zero-length message is still sent, so that send and recv always pair up.
  std::int64_t offset = 0;
  do {
    const std::int64_t n = std::min(chunk, count - offset);
    MPI_Request request = MPI_REQUEST_NULL;
    check_mpi(MPI_Isend(bytes + offset * static_cast<std::int64_t>(elem_bytes), static_cast<int>(n),
                        type, dest, static_cast<int>(tag), comm_, &request),
              "MPI_Isend", world_rank_or_minus_one());
    wait(request, Pending::send, "MPI_Isend");
    offset += n;
  } while (offset < count);
}

void Communicator::recv_bytes(void* data, std::int64_t count, std::size_t elem_bytes,
                              MPI_Datatype type, int source, Tag tag) const {
  if (count < 0) fail({.rank = world_rank_or_minus_one()}, "recv: negative count {}", count);
  const std::int64_t chunk = chunk_elements(elem_bytes);
  auto* bytes = static_cast<unsigned char*>(data);
  std::int64_t offset = 0;
  do {
    const std::int64_t n = std::min(chunk, count - offset);
    MPI_Status status;
    MPI_Request request = MPI_REQUEST_NULL;
    check_mpi(MPI_Irecv(bytes + offset * static_cast<std::int64_t>(elem_bytes), static_cast<int>(n),
                        type, source, static_cast<int>(tag), comm_, &request),
              "MPI_Irecv", world_rank_or_minus_one());
    wait(request, Pending::recv, "MPI_Irecv", &status);
    // A shorter message means the sender sent fewer elements (or used another chunk size):
    // the stream is out of step, and continuing would pair the wrong chunks.
    int received = 0;
    check_mpi(MPI_Get_count(&status, type, &received), "MPI_Get_count", world_rank_or_minus_one());
    if (received != n) {
      fail({.rank = world_rank_or_minus_one()},
           "recv from rank {} tag {}: expected a chunk of {} elements at offset {} of {}, got {} "
           "(sender and receiver disagree on the count or the chunk size)",
           source, static_cast<int>(tag), n, offset, count, received);
    }
    offset += n;
  } while (offset < count);
}

bool Communicator::any_failed(bool local_failed) const {
  int local = local_failed ? 1 : 0;
  int any = 0;
  check_mpi(MPI_Allreduce(&local, &any, 1, MPI_INT, MPI_LOR, comm_), "MPI_Allreduce(LOR)",
            world_rank_or_minus_one());
  return any != 0;
}

int Communicator::first_failed_rank(bool local_failed) const {
  int local = local_failed ? rank_ : INT32_MAX;
  int first = INT32_MAX;
  check_mpi(MPI_Allreduce(&local, &first, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce(MIN)",
            world_rank_or_minus_one());
  return first == INT32_MAX ? -1 : first;
}

void Communicator::broadcast(std::vector<std::int64_t>& values, int root) const {
  check_mpi(MPI_Bcast(values.data(), static_cast<int>(values.size()), MPI_INT64_T, root, comm_),
            "MPI_Bcast", world_rank_or_minus_one());
}

std::vector<std::int64_t> Communicator::allgather(const std::vector<std::int64_t>& mine) const {
  std::vector<std::int64_t> all(mine.size() * static_cast<std::size_t>(size_));
  check_mpi(MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_INT64_T, all.data(),
                          static_cast<int>(mine.size()), MPI_INT64_T, comm_),
            "MPI_Allgather", world_rank_or_minus_one());
  return all;
}

// ---- MpiWorld ----

namespace {

bool init_mpi(int* argc, char*** argv) {
  int initialized = 0;
  check_mpi(MPI_Initialized(&initialized), "MPI_Initialized", -1);
  if (initialized) return false;
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread", -1);
  // Errors from calls on MPI_COMM_WORLD itself (and from MPI_Abort's own checks) must return too.
  check_mpi(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler",
            -1);
  if (provided < MPI_THREAD_FUNNELED) {
    int rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fail({.rank = rank}, "MPI provides thread level {}, ShardQuant needs MPI_THREAD_FUNNELED",
         provided);
  }
  return true;
}

MPI_Comm dup_world() {
  MPI_Comm out = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &out), "MPI_Comm_dup", world_rank_or_minus_one());
  return out;
}

}  // namespace

MpiWorld::MpiWorld(int* argc, char*** argv)
    : initialized_here_(init_mpi(argc, argv)), world_(std::in_place, dup_world()) {}

MpiWorld::~MpiWorld() {
  world_.reset();  // MPI_Comm_free must come before MPI_Finalize
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (initialized_here_ && !finalized) MPI_Finalize();
}

MpiWorld& process_world() {
  static MpiWorld world(nullptr, nullptr);
  return world;
}

// ---- abort_all ----

void abort_all(const sq::Error& error) {
  const int rank = world_rank_or_minus_one();
  // The world rank leads the line (whatever rank the error carried); other context stays.
  sq::ErrorContext context = error.context();
  context.rank = -1;
  const std::string text = sq::Error(error.message(), context).what();
  // One fprintf, flushed before MPI_Abort, so the line survives the kill of this process.
  std::fprintf(stderr, "error: rank %d: %s\n", rank, text.c_str());
  std::fflush(stderr);
  if (rank < 0) std::exit(1);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);  // MPI_Abort does not return; this keeps [[noreturn]] honest if it ever did
}

// ---- MpiReducer ----

void MpiReducer::allreduce_inplace(std::span<float> values, MPI_Op op, const char* what) {
  const std::int64_t chunk = comm_.chunk_elements(sizeof(float));
  const auto total = static_cast<std::int64_t>(values.size());
  for (std::int64_t offset = 0; offset < total; offset += chunk) {
    const std::int64_t n = std::min(chunk, total - offset);
    MPI_Request request = MPI_REQUEST_NULL;
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, values.data() + offset, static_cast<int>(n), MPI_FLOAT,
                             op, comm_.native(), &request),
              what, world_rank_or_minus_one());
    comm_.wait(request, Communicator::Pending::collective, what);
  }
}

void MpiReducer::max_inplace(std::span<float> values) {
  allreduce_inplace(values, MPI_MAX, "MPI_Allreduce(MAX)");
}

void MpiReducer::min_inplace(std::span<float> values) {
  allreduce_inplace(values, MPI_MIN, "MPI_Allreduce(MIN)");
}

std::vector<double> MpiReducer::sum_samples(std::span<const float> per_sample,
                                            std::int64_t first_sample, std::int64_t count,
                                            std::int64_t n, std::int64_t total_samples) {
  const int world_rank = world_rank_or_minus_one();
  const bool bad_local = count < 0 || n < 0 || first_sample < 0 ||
                         static_cast<std::int64_t>(per_sample.size()) != count * n;
  // Agree on bad arguments first: a rank that threw alone would leave the others in the gather.
  if (comm_.any_failed(bad_local)) {
    fail({.rank = world_rank},
         "sum_samples: bad arguments on some replica (here: first {} count {} n {} values {})",
         first_sample, count, n, per_sample.size());
  }

  // Every replica learns every range and checks that they tile [0, total) with one n.
  const int replicas = comm_.size();
  std::vector<std::int64_t> mine = {first_sample, count, n, total_samples};
  std::vector<std::int64_t> all(static_cast<std::size_t>(4 * replicas));
  check_mpi(MPI_Allgather(mine.data(), 4, MPI_INT64_T, all.data(), 4, MPI_INT64_T, comm_.native()),
            "MPI_Allgather", world_rank);
  std::vector<int> order(static_cast<std::size_t>(replicas));
  for (int r = 0; r < replicas; ++r) order[static_cast<std::size_t>(r)] = r;
  auto at = [&](int r, int field) { return all[static_cast<std::size_t>(4 * r + field)]; };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return at(a, 0) < at(b, 0); });
  std::int64_t next = 0;
  for (int r : order) {
    if (at(r, 2) != n || at(r, 3) != total_samples || at(r, 0) != next) {
      fail({.rank = world_rank},
           "sum_samples: replica ranges do not tile [0, {}) with n {}: replica {} has [{}, {}) "
           "n {} of {} where sample {} was expected",
           total_samples, n, r, at(r, 0), at(r, 0) + at(r, 1), at(r, 2), at(r, 3), next);
    }
    next += at(r, 1);
  }
  if (next != total_samples) {
    fail({.rank = world_rank}, "sum_samples: replicas hold {} samples, expected {}", next,
         total_samples);
  }

  std::vector<double> sums(static_cast<std::size_t>(n), 0.0);
  if (n == 0 || total_samples == 0) return sums;

  // Gather a block of columns at a time: every sample's values for columns [c0, c0 + width).
  // This bounds both the gathered buffer and every MPI count (int) by the chunk limit; the sum of
  // each column still sees its samples in global order, so the blocking changes nothing.
  constexpr std::int64_t max_block_elements = std::int64_t{1} << 24;  // 64 MiB of floats
  const std::int64_t block_elements =
      std::min(comm_.chunk_elements(sizeof(float)), max_block_elements);
  const std::int64_t width = std::clamp<std::int64_t>(block_elements / total_samples, 1, n);
  if (total_samples * width > max_mpi_count) {
    fail({.rank = world_rank}, "sum_samples: {} samples are too many for one MPI gather",
         total_samples);
  }

  std::vector<int> counts(static_cast<std::size_t>(replicas));
  std::vector<int> displs(static_cast<std::size_t>(replicas));
  std::vector<float> packed;
  std::vector<float> gathered(static_cast<std::size_t>(total_samples * width));
  for (std::int64_t c0 = 0; c0 < n; c0 += width) {
    const std::int64_t w = std::min(width, n - c0);
    for (int r = 0; r < replicas; ++r) {
      counts[static_cast<std::size_t>(r)] = static_cast<int>(at(r, 1) * w);
      displs[static_cast<std::size_t>(r)] = static_cast<int>(at(r, 0) * w);
    }
    packed.resize(static_cast<std::size_t>(count * w));
    for (std::int64_t s = 0; s < count; ++s) {
      std::copy_n(per_sample.data() + s * n + c0, w, packed.data() + s * w);
    }
    check_mpi(MPI_Allgatherv(packed.data(), static_cast<int>(count * w), MPI_FLOAT, gathered.data(),
                             counts.data(), displs.data(), MPI_FLOAT, comm_.native()),
              "MPI_Allgatherv", world_rank);
    // Displacements follow the sample index, so gathered is the block in global sample order.
    accumulate_samples(std::span<const float>(gathered.data(), total_samples * w), total_samples, w,
                       std::span<double>(sums.data() + c0, w));
  }
  return sums;
}

}  // namespace sq::pipeline
