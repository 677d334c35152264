/*
 * perfcounter.h - the DPU cycle counter, emulator version (SDK names).
 *
 * The emulator returns MODELED cycles, not measured ones: one counter per DPU, advanced by every
 * DMA of any tasklet by (alpha + beta * bytes) with alpha = 77 (read) / 61 (write) and
 * beta = 0.5 cycle/byte (bytes / 2, integer) from PrIM section 3.2.1 (see shared UPMEM.md).
 * DMAs are summed serially (one DMA engine per DPU); computation and synchronization are NOT
 * modeled, so a compute-bound kernel reads far fewer cycles than real hardware would give.
 * perfcounter_config(..., true) resets the counter. Clock for conversions: 350 MHz (v1A).
 */
#ifndef _DPUSYSCORE_PERFCOUNTER_H_
#define _DPUSYSCORE_PERFCOUNTER_H_

#include <stdbool.h>
#include <stdint.h>
#include "attributes.h"

typedef uint64_t perfcounter_t;

typedef enum _perfcounter_config_t {
    COUNT_SAME = 0,
    COUNT_CYCLES = 1,
    COUNT_INSTRUCTIONS = 2,
    COUNT_NOTHING = 3,
} perfcounter_config_t;

#ifndef CLOCKS_PER_SEC
#define CLOCKS_PER_SEC 350000000
#endif

static inline perfcounter_t perfcounter_config(perfcounter_config_t config, bool reset_value)
{
    perfcounter_t previous = __UPDLRM_RT->perfcounter_get();
    __UPDLRM_RT->perfcounter_config((int)config, reset_value ? 1 : 0);
    return previous;
}

static inline perfcounter_t perfcounter_get(void) { return __UPDLRM_RT->perfcounter_get(); }

#endif
