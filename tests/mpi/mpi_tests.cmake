# MPI tests (label mpi), included from tests/CMakeLists.txt; empty unless SQ_DISTRIBUTED.
# test_mpi is one GoogleTest binary run under mpiexec with 1, 2 and 4 ranks (oversubscribed: the
# CI machines have 2 cores); mpi_abort_probe checks that abort_all ends a job instead of hanging.
# CMake allows one command per line, so the SQ_DISTRIBUTED guard lives here, not at the include.
if(NOT SQ_DISTRIBUTED)
  return()
endif()

set(sq_mpi_dir ${CMAKE_CURRENT_LIST_DIR})
# We run as root in containers; Open MPI refuses that unless told twice.
set(sq_mpi_env "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")

add_executable(test_mpi ${sq_mpi_dir}/mpi_test_main.cpp ${sq_mpi_dir}/test_mpi_world.cpp)
target_link_libraries(test_mpi PRIVATE sq_pipeline GTest::gtest)
sq_warnings(test_mpi)

foreach(np 1 2 4)
  add_test(NAME mpi.test_mpi.np${np}
           COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} --oversubscribe
                   ${MPIEXEC_PREFLAGS} $<TARGET_FILE:test_mpi> ${MPIEXEC_POSTFLAGS})
  set_tests_properties(mpi.test_mpi.np${np} PROPERTIES
                       LABELS mpi ENVIRONMENT "${sq_mpi_env}" TIMEOUT 120)
endforeach()

add_executable(mpi_abort_probe ${sq_mpi_dir}/mpi_abort_probe.cpp)
target_link_libraries(mpi_abort_probe PRIVATE sq_pipeline)
sq_warnings(mpi_abort_probe)

# Rank 1 fails while ranks 0 and 2 wait in a barrier: the job must end non-zero within 60 s
# (timeout's 124 counts as a hang) and say which rank failed.
add_test(NAME mpi.abort_all
         COMMAND bash -c "timeout 60 \"$0\" ${MPIEXEC_NUMPROC_FLAG} 3 --oversubscribe \"$1\" \
2>\"$2\"; rc=$?; cat \"$2\" >&2; \
if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo \"FAIL: exit status $rc\" >&2; exit 1; fi; \
grep -q 'error: rank 1: ' \"$2\" || { echo 'FAIL: no error line for rank 1' >&2; exit 1; }; \
echo \"ok: exit status $rc\""
                 ${MPIEXEC_EXECUTABLE} $<TARGET_FILE:mpi_abort_probe>
                 ${CMAKE_BINARY_DIR}/test_tmp/mpi_abort_probe.stderr)
set_tests_properties(mpi.abort_all PROPERTIES LABELS mpi ENVIRONMENT "${sq_mpi_env}" TIMEOUT 90)

# `shardquant run` under mpirun: byte-identical exports across layouts, kill -9 at named and
# random points, corrupted checkpoints, the refusals, and stops on SIGUSR1/SIGTERM (tests/mpi/distributed_run.sh).
foreach(case layouts named-kills random-kills corruption refusals signals)
  add_test(NAME mpi.run.${case}
           COMMAND bash ${sq_mpi_dir}/distributed_run.sh ${MPIEXEC_EXECUTABLE}
                   $<TARGET_FILE:shardquant> ${CMAKE_BINARY_DIR}/test_tmp/mpi_run_${case} ${case})
  set_tests_properties(mpi.run.${case} PROPERTIES LABELS mpi ENVIRONMENT "${sq_mpi_env}"
                       TIMEOUT 600)
endforeach()
