/*
 * barrier.h - tasklet barriers, emulator version (SDK names).
 * BARRIER_INIT(name, count) defines a barrier released when `count` tasklets wait on it.
 * On the emulator, a barrier that can never be released (all runnable tasklets blocked or
 * finished) is a DPU fault.
 */
#ifndef _DPUSYSCORE_BARRIER_H_
#define _DPUSYSCORE_BARRIER_H_

#include "attributes.h"

typedef struct updlrm_emu_barrier barrier_t;

#define BARRIER_INIT(_name, _count) barrier_t _name = {(uint32_t)(_count), 0u}

static inline void barrier_wait(barrier_t *barrier) { __UPDLRM_RT->barrier_wait(barrier); }

#endif
