/*
 * dpu_emu.h - emulator-only extras next to the libdpu subset (only with UPDLRM_EMULATOR):
 * exact per-DPU counters of the last launch, the last fault, and the worker-thread count.
 */
#ifndef UPDLRM_EMU_DPU_EMU_H
#define UPDLRM_EMU_DPU_EMU_H

#include <stddef.h>
#include <stdint.h>

#include "dpu.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DPU_EMU_MAX_TASKLETS 24

/* Counters of one DPU. DMA figures cover the last launch; host transfer bytes accumulate since
 * the last dpu_emu_reset_transfer_counters() (or the allocation). */
struct dpu_emu_counters {
    uint64_t dma_read_ops[DPU_EMU_MAX_TASKLETS];    /* mram_read calls per tasklet */
    uint64_t dma_read_bytes[DPU_EMU_MAX_TASKLETS];  /* bytes read from MRAM per tasklet */
    uint64_t dma_write_ops[DPU_EMU_MAX_TASKLETS];   /* mram_write calls per tasklet */
    uint64_t dma_write_bytes[DPU_EMU_MAX_TASKLETS]; /* bytes written to MRAM per tasklet */
    uint64_t host_to_dpu_bytes; /* bytes the host wrote (push, broadcast, copy_to) */
    uint64_t dpu_to_host_bytes; /* bytes the host read (push FROM_DPU, copy_from) */
    uint64_t wall_ns;           /* emulator wall time of this DPU's last launch (emulator-wall) */
    uint64_t modeled_cycles;    /* perfcounter model: DMA alpha + beta * bytes (see perfcounter.h) */
    uint32_t wram_static_bytes; /* WRAM globals + NR_TASKLETS * STACK_SIZE_DEFAULT */
    uint32_t wram_heap_peak_bytes; /* mem_alloc high-water mark in the last launch */
    uint32_t nr_tasklets;
    int32_t faulted;            /* 1 when this DPU faulted in the last launch */
    /* MRAM addressing outside strict mode, as hardware resolves it (last launch, all tasklets): */
    uint64_t mram_realigned_ops; /* DMAs whose MRAM or WRAM address had its low 3 bits dropped */
    uint64_t mram_rebased_ops;   /* DMAs given an MRAM offset (no 0x08000000 base), e.g. a heap offset */
    uint64_t switches;           /* tasklet switches the scheduler made */
};

struct dpu_set_t;

/* Copies the counters of every DPU of `set` (one struct per DPU, in DPU_FOREACH order). */
dpu_error_t dpu_emu_get_counters(struct dpu_set_t set, struct dpu_emu_counters *out);
/* Zeroes the host transfer byte counters of every DPU of `set`. */
dpu_error_t dpu_emu_reset_transfer_counters(struct dpu_set_t set);
/* The last fault of `set` (from a launch or a load): DPU index, tasklet (UINT32_MAX when none),
 * and the reason in `msg` (NUL-terminated, truncated to `len`). Returns DPU_OK when there was
 * a fault, DPU_ERR_INVALID_DPU_SET when the set never faulted. */
dpu_error_t dpu_emu_last_fault(struct dpu_set_t set, uint32_t *dpu, uint32_t *tasklet, char *msg, size_t len);
/* Details of the last failing call on this thread (which symbol, offset, file, ...); "" if none. */
const char *dpu_emu_last_error(void);
/* The printf output of one DPU's last launch (NUL-terminated; valid until the next launch). */
const char *dpu_emu_log(struct dpu_set_t dpu, size_t *length);
/* sizeof(struct dpu_emu_counters), for bindings that mirror the layout. */
size_t dpu_emu_counters_size(void);
/* Worker threads used by later dpu_load() calls (0 = one per online CPU, the default). */
void dpu_emu_set_workers(unsigned n);

/* Scheduling policies (also the profile's "schedule=rr|random|run"). */
#define DPU_EMU_SCHEDULE_RR 0     /* round-robin switch at every DMA and synchronization call */
#define DPU_EMU_SCHEDULE_RANDOM 1 /* a seeded random runnable tasklet at the same points */
#define DPU_EMU_SCHEDULE_RUN 2    /* each tasklet runs until it blocks (race-free kernels only) */
/* The policy and seed of later launches of `set` (the race finder: run with several seeds). */
dpu_error_t dpu_emu_set_schedule(struct dpu_set_t set, int policy, uint64_t seed);
/* Launch timeout of later launches of `set` in milliseconds (0 = none). A launch that runs longer
 * faults the DPUs still running with "launch timed out". Default: profile "timeoutMs", else
 * $UPDLRM_EMU_TIMEOUT_MS, else 120000. */
dpu_error_t dpu_emu_set_timeout(struct dpu_set_t set, uint32_t timeout_ms);
/* The loaded program's data symbols, one "name kind address size\n" line each (kind W = WRAM,
 * M = MRAM; address as the DPU sees it), NUL-terminated in `buf` (truncated to `len`). Returns
 * the bytes the full list needs (without the NUL), so a caller can retry with a larger buffer. */
size_t dpu_emu_list_symbols(struct dpu_set_t set, char *buf, size_t len);
/* Strict MRAM addressing for `set` (1: unaligned and base-less MRAM addresses fault; 0: resolved as
 * hardware does and counted; -1: the kernel's own choice, UPDLRM_EMU_STRICT at its build). */
dpu_error_t dpu_emu_set_strict(struct dpu_set_t set, int strict);

#ifdef __cplusplus
}
#endif

#endif
