/*
 * updlrm_emu_rt.h - the bridge between a DPU kernel compiled with the host compiler and the
 * updlrm emulator (host/emu). Not an SDK header: every SDK-named runtime header (defs.h, mram.h,
 * barrier.h, ...) includes it.
 *
 * A kernel shared object (<name>.emu.so) has no undefined references into the emulator. Instead
 * it carries one pointer, __updlrm_emu_rt, that the emulator's loader sets right after dlopen();
 * the static inline SDK functions (me(), mram_read(), barrier_wait(), ...) call through it.
 *
 * Sections the loader relies on (the kernel build links objects with `ld -r` and
 * host/emu/kernel.ld so that they are contiguous):
 *   updlrm_wram   every writable global (.data*, .bss*): the DPU's WRAM globals, saved per DPU
 *   updlrm_mram   __mram and __mram_noinit variables: placeholders mapped to MRAM addresses
 *   updlrm_rt     this runtime pointer (never saved or restored per DPU)
 */
#ifndef UPDLRM_EMU_RT_H
#define UPDLRM_EMU_RT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifndef NR_TASKLETS
#define NR_TASKLETS 1
#endif
#ifndef STACK_SIZE_DEFAULT
#define STACK_SIZE_DEFAULT 1024
#endif

/* Strict MRAM addressing (1, the default of compile_kernel/updlrm_add_emu_kernel): unaligned or
 * base-less MRAM addresses fault. 0 (dpu-upmem-dpurte-clang's default): resolved as hardware does. */
#ifndef UPDLRM_EMU_STRICT
#define UPDLRM_EMU_STRICT 1
#endif
/* 1 marks a kernel whose results do not depend on how tasklets interleave: the emulator may then
 * run each tasklet until it blocks (faster). Default 0: switch at every DMA and sync call. */
#ifndef UPDLRM_EMU_RACE_FREE
#define UPDLRM_EMU_RACE_FREE 0
#endif

#define UPDLRM_EMU_RT_VERSION 2u
#define UPDLRM_EMU_MRAM_BASE 0x08000000u   /* MRAM addresses as a real DPU sees them */
#define UPDLRM_EMU_MRAM_SIZE (64u << 20)   /* 64 MiB per DPU */
#define UPDLRM_EMU_WRAM_SIZE 65536u        /* 64 KiB per DPU */

/* Barrier, mutex and semaphore objects live in the kernel's WRAM globals; the wait queues live in
 * the emulator's scheduler (reset at every launch), so a faulted launch leaves nothing stale. */
/* The SDK's barrier_t fields (some programs set them by hand): the emulator releases the
 * waiters when initial_count tasklets have arrived; count, wait_queue and lock are kept for
 * source compatibility. */
struct updlrm_emu_barrier {
    uint8_t wait_queue;
    uint8_t count;
    uint8_t initial_count;
    uint8_t lock;
};
struct updlrm_emu_mutex {
    uint32_t id;
};
struct updlrm_emu_sem {
    int32_t value;
    uint32_t id;
};

/* The function table; filled by the emulator, read by the kernel. */
struct updlrm_emu_rt {
    uint32_t version;
    uint32_t reserved;
    unsigned (*me)(void);
    void (*mram_read)(const void *mram_from, void *wram_to, unsigned nb_of_bytes);
    void (*mram_write)(const void *wram_from, void *mram_to, unsigned nb_of_bytes);
    void *(*mem_alloc)(size_t size);
    void (*mem_reset)(void);
    void *(*mram_heap_pointer)(void);
    void (*barrier_wait)(struct updlrm_emu_barrier *barrier);
    void (*mutex_lock)(struct updlrm_emu_mutex *mutex);
    void (*mutex_unlock)(struct updlrm_emu_mutex *mutex);
    int (*mutex_trylock)(struct updlrm_emu_mutex *mutex);
    void (*sem_take)(struct updlrm_emu_sem *sem);
    void (*sem_give)(struct updlrm_emu_sem *sem);
    int (*handshake_notify)(void);
    int (*handshake_wait_for)(unsigned notifier);
    void (*perfcounter_config)(int mode, int reset);
    uint64_t (*perfcounter_get)(void);
    int (*vprintf)(const char *format, va_list ap);
    void (*fault)(const char *reason); /* stop this DPU with a fault (halt(), assert); never returns in a launch */
    void (*yield)(void);               /* a scheduling point (the C-level race-finder switch) */
};

#ifndef UPDLRM_EMU_NO_KERNEL_SYMBOLS
/* Defined (weakly, once per kernel .so) here so that the kernel needs nothing from outside. */
__attribute__((weak, visibility("default"), section("updlrm_rt"))) const struct updlrm_emu_rt *__updlrm_emu_rt = 0;
/* What the loader needs to know about the kernel's build (WRAM budget check). */
__attribute__((weak, used, visibility("default"))) const uint32_t __updlrm_emu_nr_tasklets = NR_TASKLETS;
__attribute__((weak, used, visibility("default"))) const uint32_t __updlrm_emu_stack_size = STACK_SIZE_DEFAULT;
__attribute__((weak, used, visibility("default"))) const uint32_t __updlrm_emu_rt_version = UPDLRM_EMU_RT_VERSION;
__attribute__((weak, used, visibility("default"))) const uint32_t __updlrm_emu_strict = UPDLRM_EMU_STRICT;
/* Page alignment for the static MRAM sections (kernel.ld pads their ends): the loader keeps them
 * inaccessible so that a kernel's direct access to a __mram variable is caught and mirrored. */
__attribute__((section("updlrm_mram_anchor"), aligned(4096), used)) static char __updlrm_mram_anchor[0];
__attribute__((section(".bss.updlrm_mramz_anchor"), aligned(4096), used)) static char __updlrm_mramz_anchor[0];
__attribute__((weak, used, visibility("default"))) const uint32_t __updlrm_emu_race_free = UPDLRM_EMU_RACE_FREE;
#endif

#define __UPDLRM_RT (__updlrm_emu_rt)

#endif /* UPDLRM_EMU_RT_H */
