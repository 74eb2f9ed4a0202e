// Fault injection for crash-safety tests: named points in the code where a test can have the
// process killed with SIGKILL (no cleanup, no flush: what a node failure or `kill -9` does), and a
// timer that kills it at a chosen moment. Controlled by one environment variable, read once:
//
//   SQ_FAULT=<point>[@<rank>][#<n>]   SIGKILL at the n-th (default 1st) time this process passes
//                                     `point`, only on MPI rank `rank` (default: any rank)
//   SQ_FAULT=fail:<point>[@<rank>][#<n>]  throw sq::Error there instead (an ordinary failure)
//   SQ_FAULT=usr1:<point>[@<rank>][#<n>]  raise SIGUSR1 there (a preemption warning, on time)
//   SQ_FAULT=after-ms:<ms>[@<rank>]   SIGKILL <ms> milliseconds after arm_timer() is called
//
// Unset (production), every call is a relaxed atomic load and a branch. The points in use are
// listed in docs/ARCHITECTURE.md (crash safety).
#pragma once

#include <string_view>

namespace sq::fault {

// Tells the fault module this process's rank (before any point is passed); -1 when unknown.
void set_rank(int rank);
// Passes a named point: kills the process if SQ_FAULT names it for this rank and hit count.
void point(std::string_view name);
// Starts the after-ms timer when SQ_FAULT asks for one (for this rank); no-op otherwise.
void arm_timer();

}  // namespace sq::fault
