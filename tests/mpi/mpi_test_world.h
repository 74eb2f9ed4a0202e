// The MpiWorld that tests/mpi/mpi_test_main.cpp creates for the MPI tests.
#pragma once

#include "pipeline/mpi_world.h"

sq::pipeline::MpiWorld& mpi_world();
