/*
 * bad.c - deliberately faulty test kernel for the emulator. MODE (a -D define) picks the fault;
 * tasklet FAULT_TASKLET (default 3) of the DPU whose dpu_tag equals FAULT_TAG (default 1)
 * commits it, every other tasklet/DPU behaves (barrier, one good DMA):
 *   1 MRAM address not 8-byte aligned      2 DMA of 4 bytes          3 DMA of 4,096 bytes
 *   4 MRAM address past the 64 MiB MRAM    5 WRAM address unaligned  6 mem_alloc over budget
 *   7 one tasklet skips a barrier          8 barrier count > NR_TASKLETS
 *   9 WRAM over budget at load (big static array; no tasklet needed)
 *  10 DMA range that starts inside MRAM and runs past its end
 *  11 DMA into a WRAM address that is no global, heap block or stack (a wild pointer)
 *  12 halt()
 */
#include <alloc.h>
#include <barrier.h>
#include <defs.h>
#include <mram.h>
#include <stdint.h>

#ifndef MODE
#define MODE 1
#endif
#ifndef FAULT_TASKLET
#define FAULT_TASKLET 3
#endif
#ifndef FAULT_TAG
#define FAULT_TAG 1
#endif

#if MODE == 8
BARRIER_INIT(bar, NR_TASKLETS + 1);
#else
BARRIER_INIT(bar, NR_TASKLETS);
#endif
__host uint32_t dpu_tag;
__host uint32_t done;
__dma_aligned uint8_t small[64];
#if MODE == 3
__dma_aligned uint8_t big[4096];
#endif
#if MODE == 9
uint8_t huge[60000];
#endif

int main(void)
{
    unsigned t = me();
    __mram_ptr uint8_t *heap = (__mram_ptr uint8_t *)DPU_MRAM_HEAP_POINTER;
    int culprit = (t == FAULT_TASKLET && dpu_tag == FAULT_TAG);
    if (t == 0)
        mem_reset();
#if MODE == 7
    if (culprit)
        return 0; /* never reaches the barrier */
#endif
    barrier_wait(&bar);
    if (culprit) {
#if MODE == 1
        mram_read(heap + 4, small, 8);
#elif MODE == 2
        mram_read(heap, small, 4);
#elif MODE == 3
        mram_read(heap, big, 4096);
#elif MODE == 4
        mram_read((__mram_ptr void *)(uintptr_t)(0x08000000u + (64u << 20)), small, 8);
#elif MODE == 5
        mram_read(heap, small + 4, 8);
#elif MODE == 6
        (void)mem_alloc(60000);
#elif MODE == 9
        huge[t] = 1;
#elif MODE == 11
        mram_read(heap, (void *)(uintptr_t)0x10000, 8);
#elif MODE == 12
        halt();
#elif MODE == 10
        mram_read((__mram_ptr void *)(uintptr_t)(0x08000000u + (64u << 20) - 8), small, 16);
#endif
    }
    mram_read(heap, small, 8);
    barrier_wait(&bar);
    if (t == 0)
        done++;
    return 0;
}
