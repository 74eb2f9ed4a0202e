# Finds every third-party dependency once; targets below link only what their folder may use.
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(Threads REQUIRED)
# Recipes are YAML in every build, single-rank included (`shardquant run` needs them).
find_package(yaml-cpp REQUIRED)
# SHA-256 of checkpoint files (io/digest) in every build: libcrypto from libssl-dev.
find_package(OpenSSL REQUIRED)

# OpenBLAS: Debian ships the CBLAS interface in libopenblas-dev (pkg-config "openblas").
find_package(PkgConfig REQUIRED)
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)

if(SQ_DISTRIBUTED)
  find_package(MPI REQUIRED COMPONENTS CXX)
  find_package(HDF5 REQUIRED COMPONENTS C)
endif()

# CUDA: AUTO enables it when nvcc is on PATH (or CUDACXX is set).
set(SQ_WITH_CUDA OFF)
set(SQ_WITH_NCCL OFF)
if(NOT SQ_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Hopper (H100/H200) is the target; sm_90a unlocks wgmma/TMA for later kernels.
      set(CMAKE_CUDA_ARCHITECTURES 90a)
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 does not know nvcc's C++20 flag; kernels need 17
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(SQ_WITH_CUDA ON)
    # NCCL comes with the CUDA installation (as on a cluster's CUDA module) or NCCL_ROOT.
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${NCCL_ROOT} ${CUDAToolkit_INCLUDE_DIRS}
              PATH_SUFFIXES include)
    find_library(NCCL_LIBRARY nccl HINTS ${NCCL_ROOT} ${CUDAToolkit_LIBRARY_DIR}
                 PATH_SUFFIXES lib lib64)
    if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
      add_library(sq_nccl INTERFACE)
      target_include_directories(sq_nccl INTERFACE ${NCCL_INCLUDE_DIR})
      target_link_libraries(sq_nccl INTERFACE ${NCCL_LIBRARY})
      set(SQ_WITH_NCCL ON)
    endif()
  elseif(SQ_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SQ_CUDA=ON but no CUDA compiler was found (put nvcc on PATH or set CUDACXX)")
  endif()
endif()

if(SQ_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(SQ_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
