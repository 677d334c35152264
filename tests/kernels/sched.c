/*
 * sched.c - kernels whose results depend on how tasklets interleave (tests/test_emu_sched.py and
 * tests/test_emu_races.py), one MODE each:
 *   1 trace: every tasklet does ROUNDS x {mram_read; append me() to trace[]}: on a DPU the tasklets
 *     interleave at every DMA, so the trace is round-robin (0, 1, ..., 15, 0, 1, ...);
 *   2 handshake chain: tasklet t waits for t-1, notifies t+1, then mram_writes a block that overlaps
 *     the next tasklet's first word (as PrIM UNI's does); the notifier's DMA comes first on a DPU,
 *     so each block keeps its own first word;
 *   3 planted race: total = total + 1 with a DMA between the read and the write (lost updates);
 *   4 the same under a mutex (race-free: total == NR_TASKLETS * ROUNDS under every schedule).
 */
#include <barrier.h>
#include <defs.h>
#include <handshake.h>
#include <mram.h>
#include <mutex.h>
#include <stdint.h>

#ifndef ROUNDS
#define ROUNDS 4
#endif

BARRIER_INIT(bar, NR_TASKLETS);
MUTEX_INIT(lock);
__host uint32_t trace[NR_TASKLETS * ROUNDS];
__host uint32_t total;
uint32_t pos;
__dma_aligned uint64_t buf[NR_TASKLETS][4];

int main(void)
{
    uint32_t t = me();
    if (t == 0) {
        pos = 0;
        total = 0;
    }
    barrier_wait(&bar);
    __mram_ptr uint8_t *heap = (__mram_ptr uint8_t *)DPU_MRAM_HEAP_POINTER;
#if MODE == 1
    for (int r = 0; r < ROUNDS; r++) {
        mram_read(heap + t * 32, buf[t], 32);
        trace[pos++] = t;
    }
#elif MODE == 2
    /* block t = words [3t, 3t + 4): 4 words, the last one overlapping block t+1's first */
    buf[t][0] = 100 + t;
    buf[t][1] = 100 + t;
    buf[t][2] = 100 + t;
    buf[t][3] = 0xdead; /* garbage past this tasklet's 3 words */
    if (t > 0)
        handshake_wait_for(t - 1);
    if (t + 1 < NR_TASKLETS)
        handshake_notify();
    mram_write(buf[t], heap + 24 * t, 32);
#elif MODE == 3
    for (int r = 0; r < ROUNDS; r++) {
        uint32_t v = total;
        mram_read(heap + t * 32, buf[t], 32);
        total = v + 1;
    }
#elif MODE == 4
    for (int r = 0; r < ROUNDS; r++) {
        mutex_lock(lock);
        uint32_t v = total;
        mram_read(heap + t * 32, buf[t], 32);
        total = v + 1;
        mutex_unlock(lock);
    }
#endif
    return 0;
}
