/*
 * defs.h - basic DPU runtime definitions, emulator version (SDK names): me(), the tasklet
 * count, halt() and the attribute macros.
 */
#ifndef _DPUSYSCORE_DEFS_H_
#define _DPUSYSCORE_DEFS_H_

#include <stdint.h>
#include "attributes.h"

typedef uint32_t sysname_t;

/* The id of the running tasklet, 0..NR_TASKLETS-1. */
static inline sysname_t me(void) { return __UPDLRM_RT->me(); }

/* Stops the whole DPU. On the emulator this ends the launch with a DPU fault. */
static inline void halt(void) { __UPDLRM_RT->fault("halt() called"); }

#endif
