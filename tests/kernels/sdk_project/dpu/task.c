/*
 * task.c - the DPU side of the SDK-style test project: touches every DPU runtime item the
 * emulator provides (tests/test_emu_sdk_project.py checks each result against the host's own
 * arithmetic in host/app.c).
 */
#include <alloc.h>
#include <atomic_bit.h>
#include <barrier.h>
#include <defs.h>
#include <handshake.h>
#include <mram.h>
#include <mutex.h>
#include <mutex_pool.h>
#include <perfcounter.h>
#include <sem.h>
#include <seqread.h>
#include <stdint.h>
#include <stdio.h>

#define N_WORDS 512 /* uint32 words of input in the MRAM heap */

STDOUT_BUFFER_INIT(4096);
BARRIER_INIT(all, NR_TASKLETS);
ATOMIC_BIT_INIT(half_bits)[1];
barrier_t half; /* filled by hand, SDK-style: NR_TASKLETS / 2 tasklets each */
MUTEX_INIT(sum_lock);
MUTEX_POOL_INIT(pool, 4);
SEMAPHORE_INIT(sem_one, 1);

__host uint32_t scale;                   /* written by the host (dpu_copy_to / broadcast) */
__host uint64_t sum;                     /* sum of the heap words * scale */
__host uint64_t seq_sum;                 /* the same through seqread */
__host uint32_t pool_count[4];
__host uint32_t sem_count;
__host uint32_t chain[NR_TASKLETS];      /* handshake chain: chain[t] = t * 10 + chain[t-1] order */
__host uint64_t cycles;
__mram uint64_t mram_init_var[2] = {7, 9};  /* read directly by the kernel */
__mram_noinit uint64_t mram_out[NR_TASKLETS]; /* written directly by the kernel */
__mram_noinit uint64_t mram_dma_out[NR_TASKLETS];
__dma_aligned uint64_t dma_buf[NR_TASKLETS];
uint32_t chain_value;

int main(void)
{
    uint32_t t = me();
    if (t == 0) {
        sum = 0;
        seq_sum = 0;
        sem_count = 0;
        chain_value = 0;
        for (int i = 0; i < 4; i++)
            pool_count[i] = 0;
        half.wait_queue = 0xff;
        half.count = NR_TASKLETS / 2;
        half.initial_count = NR_TASKLETS / 2;
        half.lock = (uint8_t)(uintptr_t)&ATOMIC_BIT_GET(half_bits)[0];
        mem_reset();
        perfcounter_config(COUNT_CYCLES, true);
    }
    barrier_wait(&all);

    /* DMA: each tasklet a stripe of 64-byte blocks */
    uint32_t *cache = (uint32_t *)mem_alloc(64);
    uint64_t part = 0;
    for (uint32_t b = t; b < N_WORDS / 16; b += NR_TASKLETS) {
        mram_read((__mram_ptr uint8_t *)DPU_MRAM_HEAP_POINTER + b * 64, cache, 64);
        for (int i = 0; i < 16; i++)
            part += cache[i];
    }
    mutex_lock(sum_lock);
    sum += part * scale;
    mutex_unlock(sum_lock);

    /* seqread over the whole input, tasklet 0 only */
    if (t == 0) {
        seqreader_t sr;
        uint32_t *p = (uint32_t *)seqread_init(seqread_alloc(), (__mram_ptr uint8_t *)DPU_MRAM_HEAP_POINTER, &sr);
        uint64_t s = 0;
        for (int i = 0; i < N_WORDS; i++) {
            s += *p;
            p = (uint32_t *)seqread_get(p, sizeof(uint32_t), &sr);
        }
        seq_sum = s * scale;
    }

    /* mutex pool and semaphore */
    mutex_pool_lock(&pool, t);
    pool_count[t % 4]++;
    mutex_pool_unlock(&pool, t);
    sem_take(&sem_one);
    sem_count++;
    sem_give(&sem_one);

    /* hand-filled barrier for the two halves */
    if (t < NR_TASKLETS / 2)
        barrier_wait(&half);

    /* handshake chain: tasklet t runs after t-1 */
    if (t > 0)
        handshake_wait_for(t - 1);
    chain[t] = chain_value * 10 + t;
    chain_value = chain[t] % 1000;
    if (t + 1 < NR_TASKLETS)
        handshake_notify();

    /* __mram variables touched directly, and by DMA */
    mram_out[t] = mram_init_var[0] * 100 + mram_init_var[1] + t;
    dma_buf[t] = 1000 + t;
    mram_write(&dma_buf[t], &mram_dma_out[t], 8);

    barrier_wait(&all);
    if (t == 0) {
        cycles = perfcounter_get();
        printf("dpu sum %llu\n", (unsigned long long)sum);
    }
    return 0;
}
