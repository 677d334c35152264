/*
 * mram.h - MRAM <-> WRAM DMA, emulator version (SDK names).
 *
 * mram_read/mram_write: nb_of_bytes in [8, 2048] and a multiple of 8, both addresses 8-byte
 * aligned, the MRAM range inside the DPU's 64 MiB, the WRAM range inside WRAM globals, a
 * mem_alloc block or the tasklet's stack. The real hardware does not check; the emulator faults
 * the DPU on any violation and counts every operation and byte.
 */
#ifndef _DPUSYSCORE_MRAM_H_
#define _DPUSYSCORE_MRAM_H_

#include <stdint.h>
#include "attributes.h"

/* First free MRAM byte after the static MRAM variables (8-byte aligned). */
#define DPU_MRAM_HEAP_POINTER ((__mram_ptr void *)__UPDLRM_RT->mram_heap_pointer())

static inline void mram_read(const __mram_ptr void *from, void *to, unsigned int nb_of_bytes)
{
    __UPDLRM_RT->mram_read((const void *)from, to, nb_of_bytes);
}

static inline void mram_write(const void *from, __mram_ptr void *to, unsigned int nb_of_bytes)
{
    __UPDLRM_RT->mram_write(from, (void *)to, nb_of_bytes);
}

/* Convenience helpers some SDK versions provide (aligned copies of up to 2,048 bytes). */
#define mram_read_aligned mram_read
#define mram_write_aligned mram_write

#endif
