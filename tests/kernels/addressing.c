/*
 * addressing.c - MRAM addressing as hardware resolves it (tests/test_emu_addressing.py), one MODE:
 *   1 an MRAM address 4 bytes past an 8-byte boundary (hardware drops the low 3 bits)
 *   2 a heap offset given without the MRAM base 0x08000000 (hardware decodes the low bits)
 *   3 __mram / __mram_noinit variables read and written directly, without mram_read/mram_write
 */
#include <defs.h>
#include <mram.h>
#include <stdint.h>

__host uint64_t got[2];
__dma_aligned uint64_t buf[2];
__mram uint64_t init_var[2] = {11, 22};
__mram_noinit uint64_t big[1 << 18]; /* 2 MiB */

int main(void)
{
    if (me() != 0)
        return 0;
    uintptr_t heap = (uintptr_t)DPU_MRAM_HEAP_POINTER;
#if MODE == 1
    mram_read((__mram_ptr void *)(heap + 4), buf, 16);
    got[0] = buf[0];
    got[1] = buf[1];
#elif MODE == 2
    mram_read((__mram_ptr void *)(heap - 0x08000000u), buf, 16);
    got[0] = buf[0];
    got[1] = buf[1];
#elif MODE == 3
    got[0] = init_var[0] + init_var[1] + big[5];
    big[7] = got[0] * 2;
    init_var[1] = 99;
    mram_read(&big[6], buf, 16); /* a DMA sees the direct write */
    got[1] = buf[1];
#endif
    return 0;
}
