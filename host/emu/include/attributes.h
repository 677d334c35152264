/*
 * attributes.h - DPU address-space and placement attributes, emulator version (SDK names).
 *
 * On the emulator there is one (host) address space: __mram_ptr expands to nothing and MRAM
 * pointers hold emulated MRAM addresses (0x08000000 + offset). Static MRAM variables are placed in
 * the updlrm_mram section and translated to MRAM addresses by mram_read/mram_write and by the
 * host's symbol transfers. Writable WRAM globals are collected by the kernel link (kernel.ld).
 */
#ifndef _DPUSYSCORE_ATTRIBUTES_H_
#define _DPUSYSCORE_ATTRIBUTES_H_

#include "updlrm_emu_rt.h"

#define __mram_ptr
#define __mram __attribute__((section("updlrm_mram"), aligned(8), used, visibility("default")))
/* Uninitialized MRAM variables: a NOBITS section (the .bss. prefix), renamed by kernel.ld. */
#define __mram_noinit __attribute__((section(".bss.updlrm_mram_noinit"), aligned(8), used, visibility("default")))
#define __host __attribute__((used, visibility("default")))
#define __dma_aligned __attribute__((aligned(8)))
#define __keep __attribute__((used))
#define __noinline __attribute__((noinline))
#define __atomic_bit
#define __section(s) __attribute__((section(s)))
#define __aligned(n) __attribute__((aligned(n)))
#define __weak __attribute__((weak))
#define __unused __attribute__((unused))

#endif
