/*
 * mram.h - MRAM <-> WRAM DMA, emulator version (SDK names).
 *
 * mram_read/mram_write: nb_of_bytes in [8, 2048] and a multiple of 8; a size known at compile time
 * that breaks this rule is a compile error, as with the SDK. At run time the MRAM range must be
 * inside the DPU's 64 MiB and the WRAM range inside WRAM globals, a mem_alloc block or a tasklet
 * stack. Addresses: in strict mode (the default of compile_kernel and updlrm_add_emu_kernel) both
 * must be 8-byte aligned and MRAM addresses carry the 0x08000000 base; otherwise, as hardware does,
 * the low 3 bits are dropped and a base-less MRAM offset is taken as one (each such DMA counted).
 * Every DMA is a scheduling point: the other tasklets run while it is in flight.
 */
#ifndef _DPUSYSCORE_MRAM_H_
#define _DPUSYSCORE_MRAM_H_

#include <stdint.h>
#include "attributes.h"

/* First free MRAM byte after the static MRAM variables (8-byte aligned). */
#define DPU_MRAM_HEAP_POINTER ((__mram_ptr void *)__UPDLRM_RT->mram_heap_pointer())

extern void updlrm_emu_dma_size_error(void)
    __attribute__((error("mram_read/mram_write: the size must be a multiple of 8 in [8, 2048] bytes")));

/* -DUPDLRM_EMU_NO_STATIC_DMA_CHECK leaves the check to run time (tests of the runtime fault). */
#ifdef UPDLRM_EMU_NO_STATIC_DMA_CHECK
#define UPDLRM_EMU_DMA_SIZE_BAD(_n) 0
#else
#define UPDLRM_EMU_DMA_SIZE_BAD(_n) \
    (__builtin_constant_p(_n) && ((unsigned)(_n) < 8u || (unsigned)(_n) > 2048u || ((unsigned)(_n) % 8u) != 0u))
#endif

static inline void updlrm_emu_mram_read(const __mram_ptr void *from, void *to, unsigned int nb_of_bytes)
{
    __UPDLRM_RT->mram_read((const void *)from, to, nb_of_bytes);
}

static inline void updlrm_emu_mram_write(const void *from, __mram_ptr void *to, unsigned int nb_of_bytes)
{
    __UPDLRM_RT->mram_write(from, (void *)to, nb_of_bytes);
}

#define mram_read(_from, _to, _n) \
    (UPDLRM_EMU_DMA_SIZE_BAD(_n) ? updlrm_emu_dma_size_error() : updlrm_emu_mram_read((_from), (_to), (_n)))
#define mram_write(_from, _to, _n) \
    (UPDLRM_EMU_DMA_SIZE_BAD(_n) ? updlrm_emu_dma_size_error() : updlrm_emu_mram_write((_from), (_to), (_n)))

/* Convenience names some SDK versions provide (aligned copies of up to 2,048 bytes). */
#define mram_read_aligned mram_read
#define mram_write_aligned mram_write

#endif
