// Probe for abort_all (run by the mpi.abort_all test with 3 ranks): rank 1 throws and calls
// abort_all while the other ranks wait in a barrier that rank 1 never enters. Without abort_all
// the job would hang; with it, every rank must end and the job must exit non-zero.
#include "core/error.h"
#include "pipeline/mpi_world.h"

int main(int argc, char** argv) {
  sq::pipeline::MpiWorld world(&argc, &argv);
  try {
    if (world.rank() == 1) sq::fail({.file = "probe.yaml"}, "probe failure on purpose");
    world.comm().barrier();  // never completes: rank 1 is not coming
  } catch (const sq::Error& e) {
    sq::pipeline::abort_all(e);
  }
  return 0;
}
