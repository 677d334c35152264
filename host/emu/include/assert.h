/*
 * assert.h - assert() in a DPU kernel, emulator version: a failed assertion faults the DPU (as the
 * SDK's does) with the expression, file and line, instead of aborting the host process.
 */
#pragma GCC system_header
#include_next <assert.h>
#include "updlrm_emu_rt.h"

#undef assert
#ifdef NDEBUG
#define assert(_e) ((void)0)
#else
#define UPDLRM_EMU_STR2(x) #x
#define UPDLRM_EMU_STR(x) UPDLRM_EMU_STR2(x)
#define assert(_e) \
    ((_e) ? (void)0 : __UPDLRM_RT->fault("assertion failed: " #_e " at " __FILE__ ":" UPDLRM_EMU_STR(__LINE__)))
#endif
