// GoogleTest main for the MPI tests: initializes MPI through MpiWorld, which every test reaches
// through mpi_world(). Only rank 0 prints (the other ranks' listeners are removed, or each line
// would appear once per rank); the exit status is non-zero on every rank if a test failed on any,
// so rank 0 says so even when the failure happened elsewhere.
#include <gtest/gtest.h>

#include <cstdio>

#include "mpi_test_world.h"
#include "pipeline/mpi_world.h"

namespace {
sq::pipeline::MpiWorld* g_world = nullptr;
}

sq::pipeline::MpiWorld& mpi_world() { return *g_world; }

int main(int argc, char** argv) {
  sq::pipeline::MpiWorld world(&argc, &argv);
  g_world = &world;
  testing::InitGoogleTest(&argc, argv);
  if (world.rank() != 0) {
    testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int local = RUN_ALL_TESTS();
  if (local != 0 && world.rank() != 0) {
    // One line per failed test, so a failure that only another rank saw can still be found.
    const testing::UnitTest& unit = *testing::UnitTest::GetInstance();
    for (int i = 0; i < unit.total_test_suite_count(); ++i) {
      const testing::TestSuite& suite = *unit.GetTestSuite(i);
      for (int j = 0; j < suite.total_test_count(); ++j) {
        const testing::TestInfo& test = *suite.GetTestInfo(j);
        if (test.result()->Failed()) {
          std::fprintf(stderr, "rank %d: FAILED %s.%s\n", world.rank(), suite.name(), test.name());
        }
      }
    }
  }
  const bool any = world.any_failed(local != 0);
  if (any && local == 0 && world.rank() == 0) {
    std::fprintf(stderr, "FAILED: a test failed on another rank (its output is not printed)\n");
  }
  g_world = nullptr;
  return any ? 1 : 0;
}
