/*
 * alloc.h - WRAM heap allocation, emulator version (SDK names). mem_alloc returns 8-byte aligned
 * blocks and never frees; mem_reset empties the heap. Asking for more than the WRAM left after
 * static data and NR_TASKLETS stacks is a DPU fault on the emulator.
 */
#ifndef _DPUSYSCORE_ALLOC_H_
#define _DPUSYSCORE_ALLOC_H_

#include <stddef.h>
#include "attributes.h"

static inline void *mem_alloc(size_t size) { return __UPDLRM_RT->mem_alloc(size); }
static inline void mem_reset(void) { __UPDLRM_RT->mem_reset(); }

#endif
