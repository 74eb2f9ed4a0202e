#include "pipeline/stop.h"

#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>

#include "core/log.h"

namespace sq::pipeline {
namespace {

volatile sig_atomic_t g_warning = 0;    // SIGUSR1
volatile sig_atomic_t g_terminate = 0;  // SIGTERM, SIGINT

extern "C" void on_signal(int sig) {
  if (sig == SIGUSR1)
    g_warning = 1;
  else
    g_terminate = 1;
}

double grace_seconds() {
  const char* env = std::getenv("SQ_STOP_GRACE");
  if (env == nullptr || *env == '\0') return 120.0;
  try {
    const double v = std::stod(env);
    if (v >= 0) return v;
  } catch (const std::exception&) {
  }
  log::warn("SQ_STOP_GRACE='{}' is not a number of seconds; using 120", env);
  return 120.0;
}

}  // namespace

void StopControl::install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGUSR1, SIGTERM, SIGINT}) sigaction(sig, &sa, nullptr);
}

StopControl::StopControl(Communicator world) : world_(std::move(world)) {}

double StopControl::now() const {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void StopControl::poll() {
  if (g_terminate && !immediate_) {
    log::warn("SIGTERM: abandoning the current unit and stopping");
    requested_ = immediate_ = true;
    deadline_ = now();
  }
  if (g_warning && !requested_) {
    requested_ = true;
    deadline_ = now() + grace_seconds();
    log::warn("SIGUSR1: stopping at the next unit boundary (deadline in {:.0f} s)",
              deadline_ - now());
  }
  if (world_.size() <= 1) return;
  for (;;) {
    int flag = 0;
    MPI_Status status;
    check_mpi(
        MPI_Iprobe(MPI_ANY_SOURCE, static_cast<int>(Tag::stop), world_.native(), &flag, &status),
        "MPI_Iprobe", world_.rank());
    if (!flag) break;
    double notice[2] = {0, 0};  // deadline, immediate
    check_mpi(MPI_Recv(notice, 2, MPI_DOUBLE, status.MPI_SOURCE, static_cast<int>(Tag::stop),
                       world_.native(), MPI_STATUS_IGNORE),
              "MPI_Recv", world_.rank());
    if (!peer_stopped_) log::info("rank {} stopped; stopping here too", status.MPI_SOURCE);
    peer_stopped_ = true;
    deadline_ = requested_ ? std::min(deadline_, notice[0]) : notice[0];
    requested_ = true;
    immediate_ = immediate_ || notice[1] != 0;
  }
}

void StopControl::at_boundary() {
  poll();
  if (requested_) throw StopNow();
}

void StopControl::in_unit(double elapsed, double fraction) {
  poll();
  if (!requested_) return;
  if (immediate_) throw StopNow();
  // Margin for the checkpoint that ends a unit: a tenth of the unit, at least a second.
  const double remaining = fraction > 0 ? elapsed / fraction * (1 - fraction) : 0;
  if (now() + remaining * 1.1 + 1.0 > deadline_) {
    log::warn("abandoning the current unit: about {:.0f} s left in it, {:.0f} s to the deadline",
              remaining, deadline_ - now());
    throw StopNow();
  }
}

void StopControl::in_wait() {
  poll();
  if (immediate_ || peer_stopped_ || (requested_ && now() > deadline_)) throw StopNow();
}

void StopControl::notify_peers() {
  if (notified_) return;
  notified_ = true;
  const double notice[2] = {requested_ ? deadline_ : now(), immediate_ ? 1.0 : 0.0};
  for (int r = 0; r < world_.size(); ++r) {
    if (r == world_.rank()) continue;
    // Two doubles go out eagerly: the send completes without the peer, so it is never left behind.
    check_mpi(MPI_Send(notice, 2, MPI_DOUBLE, r, static_cast<int>(Tag::stop), world_.native()),
              "MPI_Send", world_.rank());
  }
}

bool StopControl::stop_all() {
  notify_peers();
  if (world_.size() <= 1) return Communicator::abandoned_requests() == 0;
  // Everyone comes: each rank either got the signal or gets our notice at its next poll.
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Ibarrier(world_.native(), &request), "MPI_Ibarrier", world_.rank());
  for (int done = 0; !done;) {
    check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test", world_.rank());
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  int mine = Communicator::abandoned_requests(), any = 0;
  check_mpi(MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, world_.native()), "MPI_Allreduce",
            world_.rank());
  return any == 0;
}

}  // namespace sq::pipeline
