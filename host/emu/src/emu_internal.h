/*
 * emu_internal.h - data structures shared by the emulator's scheduler/runtime (sched.c) and its
 * libdpu API (dpu_api.c). Not installed; nothing outside host/emu/src includes it.
 *
 * Model: a set holds N DPUs (MRAM pages, saved WRAM globals, saved WRAM heap, log, counters) and
 * one program. The program is W private dlopen()ed copies of the kernel .so ("images"), one per
 * worker thread; DPU d always runs on image d % W so that WRAM pointers a kernel keeps in its
 * globals stay valid across launches. Running DPU d = copy its WRAM globals into the image, run
 * NR_TASKLETS coroutines on the worker's stacks until all end (or a fault), copy the globals back.
 */
#ifndef UPDLRM_EMU_INTERNAL_H
#define UPDLRM_EMU_INTERNAL_H

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>

#include "dpu.h"
#include "dpu_log.h"
#include "dpu_probe.h"
#define UPDLRM_EMU_NO_KERNEL_SYMBOLS 1
#include "../include/updlrm_emu_rt.h"

#define EMU_API __attribute__((visibility("default")))
#define EMU_HIDDEN __attribute__((visibility("hidden")))

#define EMU_MRAM_BASE UPDLRM_EMU_MRAM_BASE
#define EMU_MRAM_SIZE UPDLRM_EMU_MRAM_SIZE
#define EMU_WRAM_SIZE UPDLRM_EMU_WRAM_SIZE
#define EMU_PAGE_SHIFT 20u /* MRAM backing pages of 1 MiB, allocated on first write */
#define EMU_PAGE_SIZE (1u << EMU_PAGE_SHIFT)
#define EMU_NR_PAGES (EMU_MRAM_SIZE >> EMU_PAGE_SHIFT)
#define EMU_MAX_TASKLETS DPU_EMU_MAX_TASKLETS
#define EMU_HOST_STACK_BYTES (256u << 10) /* host stack of one tasklet coroutine */
#define EMU_LOG_CAP (1u << 20)            /* printf bytes kept per DPU and launch */
#define EMU_MSG_LEN 400
#define EMU_MAX_SYNC_OBJECTS 256          /* distinct barriers/mutexes/semaphores per kernel */
#define EMU_NO_TASKLET 0xffffffffu
#define EMU_SET_MAGIC 0x55504d45u         /* "UPME": a live set */
#define EMU_ALTSTACK_BYTES (64u << 10)    /* signal stack of a worker (crash reports) */
#define EMU_DEFAULT_TIMEOUT_MS 120000u    /* launch timeout unless the profile/env/call says */

/* Scheduling policies (profile "schedule=..."). */
enum emu_policy {
    EMU_POLICY_RR = 0,     /* switch round-robin at every DMA and synchronization call (default) */
    EMU_POLICY_RANDOM = 1, /* switch to a random runnable tasklet at the same points (seeded) */
    EMU_POLICY_RUN = 2,    /* run each tasklet until it blocks (fast path for race-free kernels) */
};

/* DMA cost model for perfcounter_get (cycles): alpha + bytes / 2 (PrIM section 3.2.1). */
#define EMU_DMA_READ_ALPHA 77u
#define EMU_DMA_WRITE_ALPHA 61u

struct updlrm_emu_set;

/* One DPU; struct dpu_t * handles of the API point here. */
struct emu_dpu {
    struct updlrm_emu_set *owner;
    uint32_t index;
    uint8_t *mram_pages[EMU_NR_PAGES]; /* NULL = never written, reads as zeros */
    uint8_t *wram_saved;               /* this DPU's WRAM globals between launches */
    uint8_t *heap_saved;               /* its WRAM heap [0, heap_saved_len) between launches */
    uint32_t heap_saved_cap, heap_saved_len;
    uint32_t heap_top;                 /* mem_alloc pointer, persists like on hardware */
    void *xfer_buf;                    /* dpu_prepare_xfer() buffer, NULL when none */
    char *log;                         /* printf output of the last launch */
    size_t log_len;
    int log_truncated;
    struct dpu_emu_counters counters;
    char fault_msg[EMU_MSG_LEN];
    uint32_t fault_tasklet;
    uintptr_t fault_pc;                /* kernel code address of a crash (0 = none) */
};

/* One rank: DPUs [first, first + count) of its set; struct dpu_rank_t * handles point here. */
struct dpu_rank_t {
    struct updlrm_emu_set *set;
    uint32_t first, count;
};

/* One dlopen()ed private copy of the kernel. */
struct emu_image {
    void *handle;
    int (*main_fn)(void);
    const struct updlrm_emu_rt **rt_slot;
    uint8_t *wram_start, *wram_end;   /* updlrm_wram: writable globals */
    uint8_t *mram_start, *mram_end;   /* updlrm_mram: __mram variables (MRAM offset 0..) */
    uint8_t *mramz_start, *mramz_end; /* updlrm_mramz: __mram_noinit (after updlrm_mram) */
};

enum emu_tasklet_state { T_RUNNABLE, T_BLOCKED, T_DONE };
enum emu_wait_kind { W_NONE, W_BARRIER, W_MUTEX, W_SEM, W_NOTIFY, W_WAIT_FOR };

struct emu_tasklet {
    void *sp;            /* saved stack pointer (asm switch) */
    void *uctx;          /* ucontext_t when the portable switch is used */
    uint8_t *stack_lo, *stack_hi;
    enum emu_tasklet_state state;
    enum emu_wait_kind wait;
    const void *wait_obj;
    uint32_t wait_arg;
};

struct emu_sync_obj {
    const void *addr;
    uint32_t target;  /* barrier: tasklets to wait for (its initial count) */
    uint32_t waiting; /* barrier: tasklets arrived */
    uint32_t locked;  /* mutex */
    uint32_t owner;
};

struct emu_program;
struct updlrm_emu_set;

/* A worker thread's scheduler: runs its DPUs one after another on image `image`. */
struct emu_sched {
    struct emu_program *prog;
    struct emu_image *image;
    struct updlrm_emu_set *set;
    uint8_t *stacks;      /* nr_tasklets host stacks (mmap), reused for every DPU */
    size_t stacks_bytes;
    uint8_t *heap;        /* this worker's WRAM heap buffer (EMU_WRAM_SIZE bytes) */
    void *sched_sp;       /* scheduler's saved context */
    void *sched_uctx;
    struct emu_tasklet t[EMU_MAX_TASKLETS];
    uint32_t nr_tasklets;
    uint32_t current;
    struct emu_sync_obj objs[EMU_MAX_SYNC_OBJECTS];
    uint32_t nr_objs;
    /* state of the DPU being run */
    struct emu_dpu *dpu;
    uint32_t dpu_index;
    uint32_t heap_top, heap_peak;
    uint32_t heap_dirty;  /* bytes of the heap buffer that may hold another DPU's data */
    uint64_t cycles, perf_base;
    int faulted;
    int mram_alias;       /* image __mram sections overlap the MRAM window: no DMA fast path */
    /* scheduling */
    enum emu_policy policy;
    uint64_t rng;          /* xorshift state of the random policy */
    uint32_t rq[EMU_MAX_TASKLETS]; /* run queue (ring): runnable tasklets not running, FIFO */
    uint32_t rq_head, rq_len;
    int strict;            /* MRAM addressing: 1 = fault on unaligned/offset addresses */
    uint32_t fast_floor;   /* lowest MRAM offset the DMA fast path may touch (mirrored below) */
    volatile sig_atomic_t mirror_active; /* static MRAM mirrored into the image (see sched.c) */
    /* isolation */
    volatile sig_atomic_t in_tasklet;
    volatile sig_atomic_t deadline_hit;
    sigjmp_buf recover;    /* where a crash or a timeout in a tasklet lands (run_one_dpu) */
    uint8_t *altstack;
    uint64_t deadline_ns;  /* launch deadline (CLOCK_MONOTONIC), 0 = none */
    uint64_t switches;
    volatile int crash_sig;        /* 0 with a recovery = the deadline */
    void *volatile crash_addr;
    volatile uintptr_t crash_pc;
    void *image_base;      /* load address of the image (dladdr's dli_fbase) */
    uintptr_t code_lo, code_hi; /* the image's executable segment(s): kernel code */
};

struct emu_program {
    uint32_t nr_images;
    struct emu_image *images;
    struct emu_sched *scheds; /* one per image */
    uint32_t nr_tasklets, stack_size;
    size_t wram_size;         /* bytes of updlrm_wram */
    uint32_t wram_static;     /* wram_size + nr_tasklets * stack_size */
    uint32_t heap_limit;      /* EMU_WRAM_SIZE - wram_static */
    uint8_t *wram_pristine;   /* nr_images initial copies of updlrm_wram, one per image */
    uint32_t mram_init_size;  /* updlrm_mram bytes (multiple of 8) */
    uint32_t mram_static;     /* bytes of static MRAM variables = heap offset */
    uint8_t *mram_init;       /* pristine updlrm_mram contents */
    int strict_default;       /* the kernel's __updlrm_emu_strict */
    int race_free;            /* the kernel's __updlrm_emu_race_free */
    char *path;               /* the program file (for source lines in crash reports) */
};

struct updlrm_emu_set {
    uint32_t magic;
    uint32_t nr_dpus, dpus_per_rank;
    struct emu_dpu *dpus;
    uint32_t nr_ranks;
    struct dpu_rank_t *ranks;
    struct dpu_rank_t **rank_ptrs;
    /* options from the profile (-1 = not given) */
    int opt_policy, opt_strict;
    uint64_t opt_seed;
    uint32_t timeout_ms;
    uint32_t launch_no;            /* launches so far (seeds the random policy) */
    struct emu_program *prog;
    pthread_mutex_t lock;
    pthread_t async_thread;
    int async_running;
    dpu_error_t async_result;
    uint32_t run_first, run_count; /* DPUs of the asynchronous launch in progress */
    uint32_t profile_workers;      /* "workers=N" from the profile, 0 = dpu_emu_set_workers() */
    int last_launch_faulted;
    int has_fault;
    uint32_t fault_dpu, fault_tasklet;
    char fault_msg[EMU_MSG_LEN];
};

/* sched.c */
EMU_HIDDEN int emu_sched_init(struct emu_sched *s, struct emu_program *prog, struct emu_image *image);
EMU_HIDDEN void emu_sched_fini(struct emu_sched *s);
/* Runs DPUs first..first+count-1 of `set` that map to this scheduler's image. Returns the number
 * of DPUs that faulted. */
EMU_HIDDEN uint32_t emu_sched_run(struct emu_sched *s, struct updlrm_emu_set *set, uint32_t image_index,
                                  uint32_t first, uint32_t count);
EMU_HIDDEN extern const struct updlrm_emu_rt emu_rt_table;
/* MRAM helpers (also used by host transfers). */
EMU_HIDDEN int emu_mram_write(struct emu_dpu *dpu, uint32_t off, const void *src, size_t n);
EMU_HIDDEN void emu_mram_read(const struct emu_dpu *dpu, uint32_t off, void *dst, size_t n);
EMU_HIDDEN uint64_t emu_now_ns(void);
/* Makes an image's __mram sections inaccessible (the first direct access mirrors them). */
EMU_HIDDEN void emu_mirror_init(struct emu_image *img);
/* Installs the crash/timeout signal handlers once per process. */
EMU_HIDDEN void emu_signals_install(void);
/* "file.c:42 (func)" for a code address of a kernel image, or "" (uses addr2line). */
EMU_HIDDEN void emu_source_line(const char *so_path, uintptr_t pc, char *out, size_t len);

#endif
