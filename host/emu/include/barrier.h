/*
 * barrier.h - tasklet barriers, emulator version (SDK names and barrier_t fields).
 * BARRIER_INIT(name, count) defines a barrier released when `count` tasklets wait on it; a
 * barrier_t filled by hand (wait_queue = 0xff, count = initial_count = n) works the same. A
 * barrier that can never be released (all runnable tasklets blocked or finished) is a DPU fault.
 */
#ifndef _DPUSYSCORE_BARRIER_H_
#define _DPUSYSCORE_BARRIER_H_

#include "atomic_bit.h"
#include "attributes.h"

typedef struct updlrm_emu_barrier barrier_t;

#define BARRIER_INIT(_name, _count) \
    barrier_t _name = {0xffu, (uint8_t)(_count), (uint8_t)(_count), 0u}

static inline void barrier_wait(barrier_t *barrier) { __UPDLRM_RT->barrier_wait(barrier); }

#endif
