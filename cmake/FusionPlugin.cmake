# fusion_add_plugin(NAME SOURCES src... [ENTRY plugin.cpp] [LIBRARIES lib...] [TARGET target])
#
# Builds the plugin NAME as a shared module `fusion_<NAME>.so` that the `fusion` host loads.
# With ENTRY (the file holding FUSION_PLUGIN(...)), SOURCES also build into a static library
# `fusion_<NAME>_lib` that tests link directly, without dlopen; the module is ENTRY plus that
# library. Without ENTRY, every source goes into the module. The module is built with hidden
# visibility, so only the entry symbol is exported. LIBRARIES are what the plugin links besides the
# SDK, e.g. a model family: `LIBRARIES fusion::clip` (find_package(Fusion COMPONENTS clip)).
# TARGET names the module's CMake target when `fusion_<NAME>` is taken (the clip plugin beside the
# fusion_clip library); the file is `fusion_<NAME>.so` either way.
include_guard(GLOBAL)

function(fusion_add_plugin NAME)
  cmake_parse_arguments(ARG "" "ENTRY;TARGET" "SOURCES;LIBRARIES" ${ARGN})
  if(NOT ARG_SOURCES AND NOT ARG_ENTRY)
    message(FATAL_ERROR "fusion_add_plugin(${NAME}): no SOURCES")
  endif()
  if(TARGET fusion_sdk)
    set(_sdk fusion_sdk)
  else()
    set(_sdk fusion::sdk)
  endif()
  set(_module fusion_${NAME})
  if(ARG_TARGET)
    set(_module ${ARG_TARGET})
  endif()
  if(ARG_ENTRY)
    set(_lib fusion_${NAME}_lib)
    add_library(${_lib} STATIC ${ARG_SOURCES})
    target_link_libraries(${_lib} PUBLIC ${_sdk} ${ARG_LIBRARIES})
    set_target_properties(${_lib} PROPERTIES POSITION_INDEPENDENT_CODE ON
      CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
    target_include_directories(${_lib} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
    add_library(${_module} MODULE ${ARG_ENTRY})
    target_link_libraries(${_module} PRIVATE ${_lib})
  else()
    add_library(${_module} MODULE ${ARG_SOURCES})
    target_link_libraries(${_module} PRIVATE ${_sdk} ${ARG_LIBRARIES})
  endif()
  set_target_properties(${_module} PROPERTIES PREFIX "" OUTPUT_NAME fusion_${NAME}
    CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
    INSTALL_RPATH "$ORIGIN/../..")
  target_link_options(${_module} PRIVATE -Wl,--no-undefined)
  if(DEFINED FUSION_PLUGIN_OUTPUT_DIR)
    set_target_properties(${_module} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${FUSION_PLUGIN_OUTPUT_DIR}")
  endif()
  if(DEFINED FUSION_PLUGIN_INSTALL_DIR)
    install(TARGETS ${_module} LIBRARY DESTINATION "${FUSION_PLUGIN_INSTALL_DIR}")
  endif()
endfunction()
