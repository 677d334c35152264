# Find the UPMEM SDK: UPMEM_HOME (cache or environment) or dpu-pkg-config on PATH.
# Sets UPDLRM_SDK_FOUND, UPDLRM_DPU_CC (dpu-upmem-dpurte-clang), UPDLRM_DPU_HOST_CFLAGS and
# UPDLRM_DPU_HOST_LIBS (from `dpu-pkg-config --cflags --libs dpu`). Without the SDK it prints one
# line saying that the SDK path is off and why; the emulator path is always built.
set(UPDLRM_SDK_FOUND OFF)
set(_updlrm_hint "${UPMEM_HOME}")
if(NOT _updlrm_hint AND DEFINED ENV{UPMEM_HOME})
  set(_updlrm_hint "$ENV{UPMEM_HOME}")
endif()
set(_updlrm_bin_hints "")
if(_updlrm_hint)
  list(APPEND _updlrm_bin_hints "${_updlrm_hint}/bin")
endif()
find_program(UPDLRM_DPU_PKG_CONFIG dpu-pkg-config HINTS ${_updlrm_bin_hints})
find_program(UPDLRM_DPU_CC dpu-upmem-dpurte-clang HINTS ${_updlrm_bin_hints})
if(UPDLRM_DPU_PKG_CONFIG AND UPDLRM_DPU_CC)
  execute_process(COMMAND ${UPDLRM_DPU_PKG_CONFIG} --cflags dpu OUTPUT_VARIABLE UPDLRM_DPU_HOST_CFLAGS
                  RESULT_VARIABLE _rc1 OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${UPDLRM_DPU_PKG_CONFIG} --libs dpu OUTPUT_VARIABLE UPDLRM_DPU_HOST_LIBS
                  RESULT_VARIABLE _rc2 OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_rc1 EQUAL 0 AND _rc2 EQUAL 0)
    set(UPDLRM_SDK_FOUND ON)
    separate_arguments(UPDLRM_DPU_HOST_CFLAGS UNIX_COMMAND "${UPDLRM_DPU_HOST_CFLAGS}")
    separate_arguments(UPDLRM_DPU_HOST_LIBS UNIX_COMMAND "${UPDLRM_DPU_HOST_LIBS}")
    message(STATUS "updlrm: UPMEM SDK found (${UPDLRM_DPU_CC}); building DPU binaries and the libdpu-linked module")
  else()
    message(STATUS "updlrm: UPMEM SDK path off: ${UPDLRM_DPU_PKG_CONFIG} --cflags/--libs dpu failed; emulator only")
  endif()
elseif(_updlrm_hint)
  message(STATUS "updlrm: UPMEM SDK path off: UPMEM_HOME=${_updlrm_hint} has no bin/dpu-pkg-config and bin/dpu-upmem-dpurte-clang; emulator only")
else()
  message(STATUS "updlrm: UPMEM SDK path off: neither dpu-pkg-config on PATH nor UPMEM_HOME set; emulator only")
endif()
