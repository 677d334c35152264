/*
 * crash.c - kernels that crash the way real kernel bugs do, one MODE each (tests/test_emu_isolation.py):
 *   1 NULL WRAM pointer write (SIGSEGV)       2 integer division by zero (SIGFPE)
 *   3 endless loop (launch timeout)           4 unbounded recursion (stack overflow)
 *   5 assert() failure                        6 abort()
 *   7 endless loop of DMAs (timeout seen at a scheduling point)
 * Only DPU `victim` (a __host variable) and tasklet 1 misbehave; the others finish normally.
 */
#include <assert.h>
#include <defs.h>
#include <mram.h>
#include <stdint.h>
#include <stdlib.h>

__host uint32_t victim = 0;
__host uint32_t divisor = 0;
__host uint32_t done[NR_TASKLETS];
__dma_aligned uint64_t scratch[NR_TASKLETS];
volatile uint32_t *volatile null_ptr = 0;

static uint32_t __attribute__((noinline)) deep(uint32_t n)
{
    volatile uint8_t pad[512];
    pad[n % 512] = (uint8_t)n;
    return deep(n + 1) + pad[(n * 7) % 512];
}

int main(void)
{
    done[me()] = 0;
    if (me() == 1 && victim == 1) {
#if MODE == 1
        *null_ptr = 42;
#elif MODE == 2
        done[me()] = 100u / divisor;
#elif MODE == 3
        for (volatile uint32_t spin = 0;; spin++) {
        }
#elif MODE == 4
        done[me()] = deep(0);
#elif MODE == 5
        assert(divisor == 12345);
#elif MODE == 6
        abort();
#elif MODE == 7
        for (;;)
            mram_read(DPU_MRAM_HEAP_POINTER, &scratch[me()], 8);
#endif
    }
    done[me()] = 1;
    return 0;
}
