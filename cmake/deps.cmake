# System dependencies, all from Debian 12 packages (scripts/setup installs them).
find_package(Threads REQUIRED)
find_package(absl REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(Boost 1.74 REQUIRED COMPONENTS system)
find_package(RapidJSON REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(RE2 REQUIRED IMPORTED_TARGET re2)
# The quell binary's allocator (src/cli/CMakeLists.txt). Not under the sanitizers, which
# bring their own.
if(NOT CMAKE_BUILD_TYPE MATCHES "^(Asan|Tsan|ASAN|TSAN)$" AND NOT QUELL_BUILD_FUZZ)
  pkg_check_modules(JEMALLOC REQUIRED IMPORTED_TARGET jemalloc)
endif()
if(QUELL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(QUELL_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

# RapidJSON's config only sets variables; give it a target.
if(NOT TARGET quell_rapidjson)
  add_library(quell_rapidjson INTERFACE)
  target_include_directories(quell_rapidjson SYSTEM INTERFACE ${RAPIDJSON_INCLUDE_DIRS})
  target_compile_definitions(quell_rapidjson INTERFACE RAPIDJSON_HAS_STDSTRING=1)
endif()
