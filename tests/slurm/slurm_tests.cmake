# Slurm tests (label slurm), included from tests/CMakeLists.txt; empty unless SQ_DISTRIBUTED.
# test_slurm.sh starts a one-node Slurm cluster on localhost (tests/slurm/cluster.sh: munge,
# slurmctld, slurmd in a scratch directory, no systemd; needs root) and submits the real
# slurm/quantize_*.sh scripts: interruption by the warning signal and by scontrol requeue, the job
# requeues itself and resumes to the reference export; mpirun and srun launchers; scancel.
# Skipped (77) when not root.
if(NOT SQ_DISTRIBUTED)
  return()
endif()

# mpirun (the reference run and SQ_LAUNCHER=mpirun jobs) refuses root unless told twice.
set(sq_slurm_env "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
add_test(NAME slurm.requeue
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_slurm.sh ${MPIEXEC_EXECUTABLE}
                 $<TARGET_FILE:shardquant> ${CMAKE_BINARY_DIR}/test_tmp/slurm_requeue)
set_tests_properties(slurm.requeue PROPERTIES LABELS slurm ENVIRONMENT "${sq_slurm_env}"
                     TIMEOUT 900 SKIP_RETURN_CODE 77)
