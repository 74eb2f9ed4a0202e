// Stopping a run early without losing work or hanging: preemption and time limits (DESIGN §5).
//
// SIGUSR1 is the warning before a deadline (Slurm's --signal): a rank finishes the unit of work it
// is in only if that will end before now + SQ_STOP_GRACE seconds (default 120), otherwise it
// abandons it; SIGTERM (and SIGINT) abandon at once. The rank that stops tells every other rank
// (a small message on Tag::stop, carrying the deadline); a rank stops at its next unit boundary,
// and one waiting for a peer gives up the wait when a peer stopped, the stop is immediate or the
// deadline passed. Units are committed atomically, so whatever is abandoned is simply recomputed
// by `--resume`. All ranks then meet in a final barrier of their own and the job exits with
// kStoppedExitCode.
#pragma once

#include <cstdint>
#include <exception>

#include "pipeline/mpi_world.h"

namespace sq::pipeline {

inline constexpr int kStoppedExitCode = 3;

// Thrown where a rank gives up its current unit; caught by the runner.
class StopNow : public std::exception {
 public:
  const char* what() const noexcept override { return "stop requested"; }
};

class StopControl {
 public:
  // Installs the SIGUSR1 / SIGTERM / SIGINT handlers (process-wide; they only set flags).
  static void install_signal_handlers();

  // `world`: a communicator of every rank, used only for stop notices and the final barrier.
  explicit StopControl(Communicator world);

  // Reads signals and peers' notices; cheap (a flag test and an MPI_Iprobe).
  void poll();
  bool requested() const { return requested_; }
  // Between units: throws StopNow when a stop was requested.
  void at_boundary();
  // Inside a unit, `fraction` of it done after `elapsed` seconds: throws StopNow when the stop is
  // immediate or the unit would end after the deadline.
  void in_unit(double elapsed, double fraction);
  // In a wait for a peer: throws StopNow when a peer stopped, the stop is immediate or the
  // deadline passed (a peer that only got the warning may still come).
  void in_wait();

  // After StopNow: notify the others (once), meet them in the stop barrier. Returns true when
  // this process may finalize MPI normally, false when some rank left a send or collective
  // behind (the job must end with MPI_Abort).
  bool stop_all();

 private:
  void notify_peers();
  double now() const;  // seconds since the epoch (comparable across nodes)

  Communicator world_;
  bool requested_ = false, immediate_ = false, peer_stopped_ = false, notified_ = false;
  double deadline_ = 0;  // seconds since the epoch
};

}  // namespace sq::pipeline
