// MPI for the pipeline, and only here (DESIGN §4: stages never call MPI). MpiWorld owns MPI's
// lifetime; Communicator wraps a communicator (the world, or a split such as the replica group of
// one pipeline stage) with typed, chunked send/recv and error agreement; MpiReducer implements
// core's Reducer over a replica group. Every MPI call is checked and fails as sq::Error with the
// rank in its context (STYLE lessons 7 and 9).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/reduce.h"

namespace sq::pipeline {

// Message tags: one per kind of traffic, so a stray message can never be taken for another kind.
enum class Tag : int { hidden = 1, stats = 2, control = 3, stop = 4 };

// The MPI datatype of each element type send/recv accept; other types do not compile.
template <typename T>
struct MpiType;
template <>
struct MpiType<float> {
  static MPI_Datatype get() { return MPI_FLOAT; }
};
template <>
struct MpiType<std::int32_t> {
  static MPI_Datatype get() { return MPI_INT32_T; }
};
template <>
struct MpiType<std::int64_t> {
  static MPI_Datatype get() { return MPI_INT64_T; }
};
template <>
struct MpiType<std::uint8_t> {
  static MPI_Datatype get() { return MPI_UINT8_T; }
};

// Throws sq::Error("<what> failed: <MPI's message>", rank) unless code is MPI_SUCCESS.
void check_mpi(int code, const char* what, int rank);

// An owned communicator (freed on destruction) or a view of MPI_COMM_WORLD. Move-only: two owners
// of one MPI_Comm would free it twice. Errors return (MPI_ERRORS_RETURN) and become sq::Error.
class Communicator {
 public:
  // Default: no byte limit, so a message is cut only at INT32_MAX elements (MPI counts are int).
  static constexpr std::int64_t default_chunk_bytes = INT64_MAX;

  // Takes ownership of comm (freed with MPI_Comm_free unless it is MPI_COMM_WORLD).
  explicit Communicator(MPI_Comm comm);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  Communicator(Communicator&& other) noexcept;
  Communicator& operator=(Communicator&& other) noexcept;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm native() const { return comm_; }

  // Collective: ranks with the same color form one new communicator, ordered by key (ties by
  // rank here). E.g. color = pipeline stage gives the replica group of each stage.
  Communicator split(int color, int key) const;
  // Collective: a new communicator with the same ranks (its own message space).
  Communicator dup() const;
  // Collective: the ranks that share this rank's node (MPI_COMM_TYPE_SHARED), in rank order; its
  // rank() is the node-local rank (which GPU a rank takes with device: cuda).
  Communicator split_node() const;
  void barrier() const;

  // Largest message send/recv make, in bytes (at least one element, at most INT32_MAX). Both ends
  // must use the same value, since the receiver posts the same chunks the sender sends. Lowered by
  // tests.
  void set_chunk_bytes(std::int64_t bytes);
  std::int64_t chunk_bytes() const { return chunk_bytes_; }

  // Blocking typed point-to-point of count elements, split into chunks of at most chunk_bytes()
  // (MPI counts are int; messages between one pair with one tag arrive in order, so chunks
  // reassemble). recv must name the same count the sender sent, or it fails.
  template <typename T>
  void send(const T* data, std::int64_t count, int dest, Tag tag) const {
    send_bytes(data, count, sizeof(T), MpiType<T>::get(), dest, tag);
  }
  template <typename T>
  void recv(T* data, std::int64_t count, int source, Tag tag) const {
    recv_bytes(data, count, sizeof(T), MpiType<T>::get(), source, tag);
  }

  // Collective: true on every rank if local_failed is true on any. Called at unit boundaries so
  // that all ranks agree on an error before the next collective, instead of some of them
  // entering it and waiting forever for the one that threw.
  bool any_failed(bool local_failed) const;

  // Collective: the lowest rank whose local_failed is true, or -1 when none is. Lets the ranks
  // agree on an error (and have only that rank report it) before any of them starts work.
  int first_failed_rank(bool local_failed) const;

  // Collective: every rank gets `values` of `root` (same count on every rank).
  void broadcast(std::vector<std::int64_t>& values, int root) const;
  // Collective: the concatenation, in rank order, of every rank's `mine` (same size everywhere).
  std::vector<std::int64_t> allgather(const std::vector<std::int64_t>& mine) const;

  // While set, every blocking operation of this communicator (send, recv, barrier, the reducer's
  // all-reduces) waits by polling and calls the hook between polls; an exception from the hook
  // abandons the operation (a receive is cancelled, a send or collective left behind and
  // counted in abandoned_requests()) and propagates. The runner's stop protocol uses it so that
  // no rank waits forever for a peer that stopped.
  using WaitHook = std::function<void()>;
  void set_wait_hook(WaitHook hook) { wait_hook_ = std::move(hook); }
  enum class Pending { recv, send, collective };
  // Completes `request` (MPI_Wait, or polling with the hook as described above).
  void wait(MPI_Request& request, Pending kind, const char* what,
            MPI_Status* status = MPI_STATUS_IGNORE) const;
  // Sends and collectives abandoned by a throwing hook in this process: while any exist,
  // MPI_Finalize could block, so the job must end with MPI_Abort instead.
  static int abandoned_requests();

  // Elements per message for an element of elem_bytes bytes under the current chunk limit.
  std::int64_t chunk_elements(std::size_t elem_bytes) const;

 private:
  void send_bytes(const void* data, std::int64_t count, std::size_t elem_bytes, MPI_Datatype type,
                  int dest, Tag tag) const;
  void recv_bytes(void* data, std::int64_t count, std::size_t elem_bytes, MPI_Datatype type,
                  int source, Tag tag) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = -1;
  int size_ = 0;
  std::int64_t chunk_bytes_ = default_chunk_bytes;
  WaitHook wait_hook_;
};

// MPI's lifetime: MPI_Init_thread (MPI_THREAD_FUNNELED: only the main thread calls MPI) unless MPI
// is already initialized, MPI_Finalize on destruction if this object initialized it. One per
// process; neither copyable nor movable.
class MpiWorld {
 public:
  MpiWorld(int* argc, char*** argv);
  ~MpiWorld();
  MpiWorld(const MpiWorld&) = delete;
  MpiWorld& operator=(const MpiWorld&) = delete;

  int rank() const { return world_->rank(); }
  int size() const { return world_->size(); }
  // A duplicate of MPI_COMM_WORLD, so that library traffic never mixes with other users' messages.
  Communicator& comm() { return *world_; }
  const Communicator& comm() const { return *world_; }
  bool any_failed(bool local_failed) const { return world_->any_failed(local_failed); }

 private:
  bool initialized_here_ = false;
  // Optional only so the destructor can free it before MPI_Finalize.
  std::optional<Communicator> world_;
};

// The process's MPI world, initialized on first use and finalized at exit: under mpirun the job's
// ranks, otherwise a world of one (MPI singleton). MPI cannot be initialized twice in a process,
// so everything that needs the world (the runner, called repeatedly by tests) shares this one.
MpiWorld& process_world();

// Prints "error: rank K: <message>" on stderr and ends the whole job with MPI_Abort, so that a
// failure on one rank makes every rank exit non-zero instead of leaving the others hanging in a
// collective. K is the rank in MPI_COMM_WORLD. Needs MPI to be initialized; otherwise exits(1).
[[noreturn]] void abort_all(const sq::Error& error);

// core's Reducer over the replica group of one pipeline stage (the communicator is owned).
class MpiReducer final : public sq::Reducer {
 public:
  explicit MpiReducer(Communicator replicas) : comm_(std::move(replicas)) {}

  int replicas() const override { return comm_.size(); }
  int replica() const override { return comm_.rank(); }
  // MPI_Allreduce MPI_MAX / MPI_MIN on floats: exact, so order does not matter.
  void max_inplace(std::span<float> values) override;
  void min_inplace(std::span<float> values) override;
  // Gathers the per-sample partials (MPI_Allgatherv, in column blocks of at most chunk_bytes of
  // gathered data) and adds them in global sample order in double, as LocalReducer does.
  std::vector<double> sum_samples(std::span<const float> per_sample, std::int64_t first_sample,
                                  std::int64_t count, std::int64_t n,
                                  std::int64_t total_samples) override;

  Communicator& comm() { return comm_; }

 private:
  void allreduce_inplace(std::span<float> values, MPI_Op op, const char* what);
  Communicator comm_;
};

}  // namespace sq::pipeline
