# updlrm_add_emu_kernel(<name> SOURCES <c files...> [NR_TASKLETS n] [STACK_SIZE_DEFAULT b]
#                       [INCLUDE_DIRS dirs...] [DEFINES defs...] [INSTALL_DIR dir]
#                       [RACE_FREE] [NOT_STRICT])
#
# Compiles a DPU C program unchanged with the host compiler against host/emu's DPU runtime
# headers, producing ${CMAKE_CURRENT_BINARY_DIR}/<name>.emu.so, the program file the emulator's
# dpu_load() accepts. Steps: compile each source (-fPIC -fno-common, -DNR_TASKLETS,
# -DSTACK_SIZE_DEFAULT), merge the objects with `ld -r -T host/emu/kernel.ld` (which gathers the
# WRAM globals and static MRAM variables into the sections the emulator swaps per DPU), then link
# the merged object as a shared object with -Bsymbolic (the kernel's globals never bind to
# same-named symbols of the host process). Installs into ${UPDLRM_INSTALL_DIR}/kernels unless
# INSTALL_DIR says otherwise. Creates a target <name> (built by default) whose property
# UPDLRM_EMU_KERNEL_FILE is the path of the .emu.so.
# RACE_FREE marks a kernel whose results cannot depend on how its tasklets interleave (check it
# with `updlrm emu run --schedules N`): the emulator then runs each tasklet until it blocks instead
# of switching at every DMA and synchronization call (faster). NOT_STRICT resolves unaligned and
# base-less MRAM addresses as hardware does instead of faulting (strict is the default here).
set(UPDLRM_EMU_RUNTIME_INCLUDE_DIR "${CMAKE_CURRENT_LIST_DIR}/../host/emu/include")
set(UPDLRM_EMU_KERNEL_LD "${CMAKE_CURRENT_LIST_DIR}/../host/emu/kernel.ld")

function(updlrm_add_emu_kernel name)
  cmake_parse_arguments(ARG "RACE_FREE;NOT_STRICT" "NR_TASKLETS;STACK_SIZE_DEFAULT;INSTALL_DIR"
                        "SOURCES;INCLUDE_DIRS;DEFINES" ${ARGN})
  set(_race_free 0)
  if(ARG_RACE_FREE)
    set(_race_free 1)
  endif()
  set(_strict 1)
  if(ARG_NOT_STRICT)
    set(_strict 0)
  endif()
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "updlrm_add_emu_kernel(${name}): SOURCES is empty")
  endif()
  if(NOT ARG_NR_TASKLETS)
    if(UPDLRM_NR_TASKLETS)
      set(ARG_NR_TASKLETS ${UPDLRM_NR_TASKLETS})
    else()
      set(ARG_NR_TASKLETS 16)
    endif()
  endif()
  if(NOT ARG_NR_TASKLETS MATCHES "^[0-9]+$" OR ARG_NR_TASKLETS LESS 1 OR ARG_NR_TASKLETS GREATER 24)
    message(FATAL_ERROR "updlrm_add_emu_kernel(${name}): NR_TASKLETS must be 1..24, got '${ARG_NR_TASKLETS}'")
  endif()
  if(NOT ARG_STACK_SIZE_DEFAULT)
    set(ARG_STACK_SIZE_DEFAULT 1024)
  endif()
  if(NOT ARG_INSTALL_DIR)
    set(ARG_INSTALL_DIR "${UPDLRM_INSTALL_DIR}/kernels")
  endif()
  if(CMAKE_LINKER)
    set(_ld "${CMAKE_LINKER}")
  else()
    set(_ld ld)
  endif()

  set(_objs ${name}__emu_objects)
  add_library(${_objs} OBJECT ${ARG_SOURCES})
  # The runtime headers come first so that <stdio.h> resolves to the DPU printf shim.
  target_include_directories(${_objs} BEFORE PRIVATE "${UPDLRM_EMU_RUNTIME_INCLUDE_DIR}" ${ARG_INCLUDE_DIRS})
  target_compile_definitions(${_objs} PRIVATE
    NR_TASKLETS=${ARG_NR_TASKLETS} STACK_SIZE_DEFAULT=${ARG_STACK_SIZE_DEFAULT}
    UPDLRM_EMU_STRICT=${_strict} UPDLRM_EMU_RACE_FREE=${_race_free} ${ARG_DEFINES})
  target_compile_options(${_objs} PRIVATE -fPIC -fno-common)
  set_target_properties(${_objs} PROPERTIES POSITION_INDEPENDENT_CODE ON)

  set(_merged "${CMAKE_CURRENT_BINARY_DIR}/${name}.emu.o")
  set(_out "${CMAKE_CURRENT_BINARY_DIR}/${name}.emu.so")
  add_custom_command(
    OUTPUT "${_out}"
    COMMAND "${_ld}" -r -T "${UPDLRM_EMU_KERNEL_LD}" -o "${_merged}" $<TARGET_OBJECTS:${_objs}>
    COMMAND "${CMAKE_C_COMPILER}" -shared -Wl,-Bsymbolic -o "${_out}" "${_merged}"
    DEPENDS ${_objs} $<TARGET_OBJECTS:${_objs}> "${UPDLRM_EMU_KERNEL_LD}"
    COMMENT "Linking DPU kernel ${name} for the emulator (${name}.emu.so)"
    COMMAND_EXPAND_LISTS VERBATIM)
  add_custom_target(${name} ALL DEPENDS "${_out}")
  set_target_properties(${name} PROPERTIES UPDLRM_EMU_KERNEL_FILE "${_out}")
  install(FILES "${_out}" DESTINATION "${ARG_INSTALL_DIR}")
endfunction()
