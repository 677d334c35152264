/*
 * xfer.c - test kernel for host transfers and static MRAM variables on the emulator.
 * Tasklet 0 copies mram_arr[0..8) to mram_arr[8..16) through WRAM, reads mram_init[] by DMA into
 * init_echo, records DPU_MRAM_HEAP_POINTER as a 32-bit value (as real kernels cast it) and
 * writes a constant table (read-only data) to mram_arr[16..18), and stores wram_arr[0] + 1
 * through a statically initialized pointer.
 */
#include <defs.h>
#include <mram.h>
#include <stdint.h>

__host uint32_t wram_arr[64];
__host uint64_t init_echo[4];
__host uint32_t heap_addr;
__host uint32_t wram_init[2] = {0x1111, 0x2222};
__mram uint64_t mram_init[4] = {10, 20, 30, 40};
__mram_noinit uint64_t mram_arr[1024];
const uint32_t konst = 5;
static const uint64_t pattern[2] = {0x0123456789abcdefull, 0xfedcba9876543210ull};
__dma_aligned uint64_t tmp[8];
__host uint32_t ptr_target[2];
uint32_t *ptr = &ptr_target[1]; /* a statically initialized pointer into WRAM globals */

int main(void)
{
    if (me() != 0)
        return 0;
    mram_read(&mram_arr[0], tmp, sizeof tmp);
    mram_write(tmp, &mram_arr[8], sizeof tmp);
    mram_read(mram_init, init_echo, sizeof init_echo);
    heap_addr = (uint32_t)(uintptr_t)DPU_MRAM_HEAP_POINTER;
    mram_write(pattern, &mram_arr[16], sizeof pattern);
    *ptr = wram_arr[0] + 1;
    return 0;
}
