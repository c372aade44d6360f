# Helpers that keep each module's CMakeLists.txt to a few lines.
#
#   quell_library(NAME SRCS a.cc b.cc DEPS quell::core absl::status)
#     -> static library quell_NAME, alias quell::NAME, include root src/
#   quell_test(NAME SRCS x_test.cc DEPS quell::core)
#     -> GoogleTest binary registered with ctest (label "unit")
#   quell_benchmark(NAME SRCS x_bench.cc DEPS ...)
#     -> Google Benchmark binary (never run by ctest)

function(quell_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter
                                           -Wno-missing-field-initializers)
endfunction()

function(quell_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(quell_${name} STATIC ${ARG_SRCS})
  add_library(quell::${name} ALIAS quell_${name})
  target_include_directories(quell_${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(quell_${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  quell_warnings(quell_${name})
endfunction()

function(quell_test name)
  if(NOT QUELL_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  quell_warnings(${name})
  # The test's own code at -O1 in Release (the libraries' sources keep -O3; an inline or
  # template function the test instantiates too may be linked from either copy): it
  # compiles in ~40% less time than at -O3 (ledger's store_test.cc: 18 s, not 31 s), and
  # test sources are two fifths of what scripts/test compiles.
  target_compile_options(${name} PRIVATE $<$<CONFIG:Release>:-O1>)
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "${ARG_LABELS}")
endfunction()

function(quell_benchmark name)
  if(NOT QUELL_BUILD_BENCH)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} benchmark::benchmark)
  quell_warnings(${name})
endfunction()
