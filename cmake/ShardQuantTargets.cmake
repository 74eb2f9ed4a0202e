# sq_add_library(<target> FOLDER <dir> [SOURCES ...] [DEPS ...] [PRIVATE_DEPS ...])
#
# Each top-level folder is one library target. Its headers are reachable as "<dir>/x.h" only
# through an include root that holds that folder alone (a symlink in the build tree), so a
# target can include exactly the folders it links: kernels, which does not link io or MPI,
# cannot include them. This is how DESIGN's dependency direction is enforced.
function(sq_include_root dir out_var)
  set(root ${CMAKE_BINARY_DIR}/sq_include/${dir})
  get_filename_component(leaf ${dir} NAME)
  if(NOT EXISTS ${root}/${leaf})
    file(MAKE_DIRECTORY ${root})
    file(CREATE_LINK ${CMAKE_SOURCE_DIR}/${dir} ${root}/${leaf} SYMBOLIC)
  endif()
  set(${out_var} ${root} PARENT_SCOPE)
endfunction()

function(sq_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wno-unused-parameter>)
    if(SQ_WERROR)
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
    endif()
  endif()
endfunction()

function(sq_add_library target)
  cmake_parse_arguments(A "" "FOLDER" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${target} STATIC ${A_SOURCES})
  sq_include_root(${A_FOLDER} root)
  target_include_directories(${target} PUBLIC ${root})
  target_link_libraries(${target} PUBLIC ${A_DEPS} PRIVATE ${A_PRIVATE_DEPS})
  sq_warnings(${target})
endfunction()
