# How every Isthmus target is made: one static library per top-level folder,
# the same warnings, sanitizers and precompiled headers for all of them.

# ccache, when present. PCH needs the sloppiness settings to get cache hits;
# base_dir and nohashdir let two checkouts of the tree (git worktrees, a
# package build) share cache entries.
find_program(ISTHMUS_CCACHE ccache)
if(ISTHMUS_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env
      "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
      "CCACHE_BASEDIR=${PROJECT_SOURCE_DIR}" CCACHE_NOHASHDIR=1
      ${ISTHMUS_CCACHE})
endif()

# Flags shared by every target (an INTERFACE target, as userver does).
add_library(isthmus_build_flags INTERFACE)
target_compile_options(isthmus_build_flags INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
  -Woverloaded-virtual -Wnull-dereference -Wimplicit-fallthrough -Wformat=2
  # GCC 12 warns falsely inside Asio's coroutine frames (its own operator
  # new/delete pair, variant storage) and in libstdc++'s std::string
  # (GCC bugs 105329, 105651) at -O2. ASan and UBSan check those at run time.
  -Wno-maybe-uninitialized -Wno-null-dereference -Wno-mismatched-new-delete
  -Wno-array-bounds -Wno-restrict -Wno-stringop-overflow -Wno-stringop-overread)
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  # The -Wno-* list above names GCC warnings clang does not have.
  target_compile_options(isthmus_build_flags INTERFACE -Wno-unknown-warning-option)
endif()
if(ISTHMUS_WERROR)
  target_compile_options(isthmus_build_flags INTERFACE -Werror)
endif()
# Debian's hardening (dpkg-buildflags): every optimised build has it, so the
# package is built with exactly the flags CI builds with (ccache hits) and
# lintian finds nothing to complain about. Not with sanitizers (they
# replace the checked functions) nor in Debug (FORTIFY needs -O).
option(ISTHMUS_HARDENING "Stack protector, FORTIFY_SOURCE, full RELRO" ON)
if(ISTHMUS_HARDENING AND NOT ISTHMUS_SANITIZE)
  target_compile_options(isthmus_build_flags INTERFACE -fstack-protector-strong
    $<$<NOT:$<CONFIG:Debug>>:-D_FORTIFY_SOURCE=2>)
  target_link_options(isthmus_build_flags INTERFACE -Wl,-z,relro -Wl,-z,now)
endif()
if(ISTHMUS_CCACHE)
  target_compile_options(isthmus_build_flags INTERFACE -fpch-preprocess)
endif()
target_compile_definitions(isthmus_build_flags INTERFACE
  # Compile Asio once (common/asio_impl.cpp) instead of in every file.
  BOOST_ASIO_SEPARATE_COMPILATION
  BOOST_ASIO_NO_DEPRECATED
  SPDLOG_FMT_EXTERNAL)
if(ISTHMUS_SANITIZE)
  target_compile_options(isthmus_build_flags INTERFACE
    -fsanitize=${ISTHMUS_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(isthmus_build_flags INTERFACE -fsanitize=${ISTHMUS_SANITIZE})
endif()
if(ISTHMUS_FUZZ)
  # Coverage feedback for libFuzzer in every library; the targets link
  # -fsanitize=fuzzer themselves (tests/fuzz/CMakeLists.txt).
  # -fno-sanitize=function: clang 14 cannot assemble UBSan's function
  # prologue data in coroutines split with coverage instrumentation
  # ("Cannot represent a difference across sections").
  target_compile_options(isthmus_build_flags INTERFACE -fsanitize=fuzzer-no-link
                         -fno-sanitize=function)
endif()
target_link_libraries(isthmus_build_flags INTERFACE
  Boost::headers OpenSSL::SSL OpenSSL::Crypto nlohmann_json::nlohmann_json
  spdlog::spdlog fmt::fmt Threads::Threads)

# One precompiled header for the heavy third-party headers, reused by all.
add_library(isthmus_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/pch.cpp)
target_link_libraries(isthmus_pch PRIVATE isthmus_build_flags)
target_precompile_headers(isthmus_pch PRIVATE ${PROJECT_SOURCE_DIR}/cmake/pch.hpp)

function(isthmus_use_pch target)
  target_precompile_headers(${target} REUSE_FROM isthmus_pch)
endfunction()

# isthmus_add_library(NAME SOURCES ... DEPENDS ...): the library of one folder.
function(isthmus_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPENDS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC isthmus_build_flags ${ARG_DEPENDS})
  isthmus_use_pch(${name})
endfunction()

function(isthmus_add_executable name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPENDS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE isthmus_build_flags ${ARG_DEPENDS})
  isthmus_use_pch(${name})
endfunction()
