/*
 * good.c - a well-behaved test kernel for the emulator (tests/test_emu_*.py).
 * Exercises: per-DPU WRAM globals that persist across launches (launches, acc += dpu_tag),
 * a mutex held across a blocking handshake (mutual exclusion is checked via `inside`),
 * barriers between phases (every tasklet checks every other tasklet reached the phase),
 * a DMA pattern whose counts the test computes by hand, perfcounter and printf.
 *
 * MRAM heap layout: input blocks of 128 B at heap + (t * 16 + i) * 128, outputs at
 * heap + OUT_OFFSET + t * 2048. Tasklet t reads blocks i = 0..t (t+1 reads of 128 B), then writes
 * the first 8 * (t + 1) bytes of block t to its output (1 write).
 */
#include <alloc.h>
#include <barrier.h>
#include <defs.h>
#include <handshake.h>
#include <mram.h>
#include <mutex.h>
#include <perfcounter.h>
#include <stdint.h>
#include <stdio.h>

#ifndef ROUNDS
#define ROUNDS 50
#endif
#ifndef PHASES
#define PHASES 4
#endif
#define OUT_OFFSET (1u << 20)

BARRIER_INIT(bar, NR_TASKLETS);
MUTEX_INIT(mtx);

__host uint32_t dpu_tag;       /* written by the host, one value per DPU */
__host uint32_t launches;      /* persists: +1 per launch */
__host uint64_t acc;           /* persists: += dpu_tag per launch */
__host uint32_t counter;       /* reset per launch, mutex-protected, ends at NR_TASKLETS * ROUNDS */
__host uint32_t violations;    /* mutual exclusion or barrier violations seen (must stay 0) */
__host uint64_t cycles;        /* perfcounter_get() at the end, tasklet 0 */
uint32_t inside;
uint32_t phase_of[NR_TASKLETS];

int main(void)
{
    unsigned t = me();
    if (t == 0) {
        counter = 0;
        violations = 0;
        launches++;
        acc += dpu_tag;
        mem_reset();
        perfcounter_config(COUNT_CYCLES, true);
    }
    barrier_wait(&bar);

    /* Mutex: tasklet 0 blocks inside its first critical section until tasklet 1 notifies it. */
    if (t == 1 && NR_TASKLETS > 1)
        handshake_notify();
    for (int r = 0; r < ROUNDS; r++) {
        mutex_lock(mtx);
        if (inside)
            violations++;
        inside = 1;
        if (t == 0 && r == 0 && NR_TASKLETS > 1)
            handshake_wait_for(1);
        counter++;
        inside = 0;
        mutex_unlock(mtx);
    }

    /* Barrier phases: after each barrier every tasklet must have reached the phase. */
    for (uint32_t ph = 1; ph <= PHASES; ph++) {
        phase_of[t] = ph;
        barrier_wait(&bar);
        for (unsigned k = 0; k < NR_TASKLETS; k++)
            if (phase_of[k] < ph)
                violations++;
        barrier_wait(&bar);
    }

    /* The known DMA pattern. */
    uint64_t *buf = (uint64_t *)mem_alloc(128);
    __mram_ptr uint8_t *heap = (__mram_ptr uint8_t *)DPU_MRAM_HEAP_POINTER;
    for (unsigned i = 0; i <= t; i++)
        mram_read(heap + (t * 16 + i) * 128, buf, 128);
    mram_write(buf, heap + OUT_OFFSET + t * 2048, 8 * (t + 1));

    barrier_wait(&bar);
    if (t == 0) {
        cycles = perfcounter_get();
        printf("dpu_tag=%u launches=%u counter=%u\n", dpu_tag, launches, counter);
    }
    return 0;
}
