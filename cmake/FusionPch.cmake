# Precompiled headers for the whole build (FUSION_PCH, on by default with g++), and the tests' own
# optimisation level (fusion_optimise_tests_lightly, at the end).
#
# Almost every translation unit includes <ATen/ATen.h>, and parsing it costs ~8 s of the 15-35 s a
# file takes at -O3. Two headers are precompiled once each, and every target that links LibTorch
# reuses one of them (REUSE_FROM), so the build parses the LibTorch headers twice instead of ~190
# times:
#   - fusion_pch_lib: LibTorch, nlohmann::json and the standard library, for the SDK, the host, the
#     families, the plugins and the benches;
#   - fusion_pch_test: the same plus GoogleTest, for every target that links GoogleTest.
# g++ ignores a precompiled header whose flags differ (-fPIC against -fPIE, visibility): the root
# CMakeLists.txt gives every target the same ones, and CMake passes -Winvalid-pch with every
# precompiled header (CMAKE_PCH_WARN_INVALID), which makes a mismatch visible.
# The headers hold third-party code only; fusion's own headers are not in them, so each source
# still has to include what it uses (the out-of-tree examples, built without them, check that the
# installed headers stand alone).
include_guard(GLOBAL)

# Appends to OUT_VAR the names reachable from TARGET through LINK_LIBRARIES and
# INTERFACE_LINK_LIBRARIES, TARGET included (imported targets too, without looking inside them).
function(_fusion_link_closure TARGET OUT_VAR)
  set(_seen "${${OUT_VAR}}")
  set(_todo "${TARGET}")
  while(_todo)
    list(POP_FRONT _todo _t)
    if(_t IN_LIST _seen)
      continue()
    endif()
    list(APPEND _seen "${_t}")
    if(NOT TARGET "${_t}")
      continue()
    endif()
    get_target_property(_aliased "${_t}" ALIASED_TARGET)
    if(_aliased)
      list(APPEND _todo "${_aliased}")
      continue()
    endif()
    get_target_property(_imported "${_t}" IMPORTED)
    if(_imported)
      continue()
    endif()
    get_target_property(_type "${_t}" TYPE)
    set(_props INTERFACE_LINK_LIBRARIES)
    if(NOT _type STREQUAL "INTERFACE_LIBRARY")
      list(APPEND _props LINK_LIBRARIES)
    endif()
    foreach(_p IN LISTS _props)
      get_target_property(_libs "${_t}" ${_p})
      if(_libs)
        foreach(_l IN LISTS _libs)
          # $<LINK_ONLY:x> from static libraries' interfaces
          string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" _l "${_l}")
          if(NOT _l MATCHES "^\\$<" AND NOT _l MATCHES "^-")
            list(APPEND _todo "${_l}")
          endif()
        endforeach()
      endif()
    endforeach()
  endwhile()
  set(${OUT_VAR} "${_seen}" PARENT_SCOPE)
endfunction()

# All build-system targets defined in DIR and below.
function(_fusion_targets_below DIR OUT_VAR)
  get_property(_targets DIRECTORY "${DIR}" PROPERTY BUILDSYSTEM_TARGETS)
  get_property(_subdirs DIRECTORY "${DIR}" PROPERTY SUBDIRECTORIES)
  foreach(_sub IN LISTS _subdirs)
    _fusion_targets_below("${_sub}" _below)
    list(APPEND _targets ${_below})
  endforeach()
  set(${OUT_VAR} "${_targets}" PARENT_SCOPE)
endfunction()

# The targets of this build that compile sources, the precompiled headers' own left out.
function(_fusion_compiled_targets OUT_VAR)
  _fusion_targets_below("${CMAKE_SOURCE_DIR}" _all)
  set(_out "")
  foreach(_t IN LISTS _all)
    get_target_property(_type ${_t} TYPE)
    if(NOT _t MATCHES "^fusion_pch_" AND _type MATCHES "^(EXECUTABLE|SHARED_LIBRARY|MODULE_LIBRARY|STATIC_LIBRARY|OBJECT_LIBRARY)$")
      list(APPEND _out "${_t}")
    endif()
  endforeach()
  set(${OUT_VAR} "${_out}" PARENT_SCOPE)
endfunction()

# Sets OUT_VAR to TRUE when the link closure CLOSURE (from _fusion_link_closure) holds GoogleTest.
function(_fusion_links_gtest CLOSURE OUT_VAR)
  set(_closure "${CLOSURE}")
  set(_found FALSE)
  foreach(_g GTest::gtest GTest::gtest_main GTest::GTest GTest::Main)
    if(_g IN_LIST _closure)
      set(_found TRUE)
    endif()
  endforeach()
  set(${OUT_VAR} ${_found} PARENT_SCOPE)
endfunction()

function(fusion_precompile_headers)
  set(_common
    <ATen/ATen.h> <ATen/Parallel.h> <c10/core/GradMode.h> <nlohmann/json.hpp>
    <algorithm> <array> <atomic> <chrono> <cmath> <cstdint> <cstdio> <cstdlib> <cstring>
    <filesystem> <fstream> <functional> <iostream> <map> <memory> <mutex> <optional> <set>
    <sstream> <stdexcept> <string> <string_view> <thread> <unordered_map> <utility> <vector>)
  set(_stub "${CMAKE_BINARY_DIR}/fusion_pch_stub.cpp")
  if(NOT EXISTS "${_stub}")
    file(WRITE "${_stub}" "// The translation unit that builds fusion's precompiled headers.\n")
  endif()
  set(_kinds lib)
  if(FUSION_BUILD_TESTS)
    find_package(GTest REQUIRED)  # tests/ found it in its own scope; the header is needed here
    list(APPEND _kinds test)
  endif()
  foreach(_kind IN LISTS _kinds)
    add_library(fusion_pch_${_kind} OBJECT "${_stub}")
    target_link_libraries(fusion_pch_${_kind} PRIVATE torch nlohmann_json::nlohmann_json OpenMP::OpenMP_CXX)
  endforeach()
  target_precompile_headers(fusion_pch_lib PRIVATE ${_common})
  if(FUSION_BUILD_TESTS)
    target_link_libraries(fusion_pch_test PRIVATE GTest::gtest)
    target_precompile_headers(fusion_pch_test PRIVATE ${_common} <gtest/gtest.h>)
  endif()

  _fusion_compiled_targets(_all)
  set(_used 0)
  foreach(_t IN LISTS _all)
    set(_closure "")
    _fusion_link_closure(${_t} _closure)
    if(NOT "torch" IN_LIST _closure)
      continue()  # the demo's data tools: no LibTorch, nothing to share
    endif()
    set(_kind lib)
    _fusion_links_gtest("${_closure}" _test)
    if(_test AND TARGET fusion_pch_test)
      set(_kind test)
    endif()
    target_precompile_headers(${_t} REUSE_FROM fusion_pch_${_kind})
    math(EXPR _used "${_used} + 1")
  endforeach()
  message(STATUS "fusion: precompiled headers shared by ${_used} targets (FUSION_PCH=OFF to turn off)")
endfunction()

# The test code's own optimisation: -O1 in the optimised configurations, for every target that links
# GoogleTest and for the precompiled header they share (whose flags must match theirs). The code
# under test (the SDK, the plugins' libraries, fusion::testing) keeps -O3; only the test bodies,
# GoogleTest's macros and the templates they instantiate are compiled with less effort. Measured
# on the 2-core VM, one file at a time: e2e_test.cpp 22.8 s at -O3 against 11.5 s at -O1,
# values_test.cpp 14.0 against 11.0 s, options_test.cpp 11.3 against 9.9 s (-O0 is no faster:
# 13.6, 14.7, 14.1 s). Results do not change: without -ffast-math, and with -ffp-contract=off
# (ISO C++), -O1 and -O3 compute the same floats.
function(fusion_optimise_tests_lightly)
  set(_opt "$<$<CONFIG:Release,RelWithDebInfo,MinSizeRel>:-O1>")
  if(TARGET fusion_pch_test)
    target_compile_options(fusion_pch_test PRIVATE "${_opt}")
  endif()
  _fusion_compiled_targets(_all)
  foreach(_t IN LISTS _all)
    set(_closure "")
    _fusion_link_closure(${_t} _closure)
    _fusion_links_gtest("${_closure}" _test)
    if(_test)
      target_compile_options(${_t} PRIVATE "${_opt}")
    endif()
  endforeach()
endfunction()
