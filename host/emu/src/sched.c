/*
 * sched.c - the emulator's DPU runtime: tasklets as coroutines and the functions a kernel calls
 * through its runtime table (me, mram_read/mram_write with every check, mem_alloc, barriers,
 * mutexes, semaphores, handshakes, perfcounter, printf).
 *
 * Each worker thread owns one scheduler (struct emu_sched) and runs its DPUs one after another.
 * For one DPU, NR_TASKLETS coroutines run on the worker's host stacks. Scheduling points are every
 * DMA (mram_read/mram_write), barrier, mutex, semaphore and handshake call and tasklet end: at
 * each, the default policy switches to the next runnable tasklet round-robin (on a DPU the other
 * tasklets run while a DMA is in flight), the random policy to a seeded random one (the race
 * finder), and the "run" policy (kernels marked race-free) only when the tasklet blocks. Kernel
 * code between two scheduling points is atomic: the emulator never preempts it.
 * Isolation: a crash in kernel code (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, a host stack
 * overflow into the guard page) or the launch deadline (a per-thread timer signal) lands in a
 * signal handler on the worker's alternate stack, which records the fault and siglongjmps back to
 * run_one_dpu; the DPU's coroutines are abandoned like after any other fault.
 * A fault (bad DMA, WRAM heap exhausted, deadlock, halt) abandons the DPU's coroutines: their
 * stacks are simply reused for the next DPU, and the wait queues live here (reset per DPU), so
 * nothing stale remains for the next launch.
 *
 * Context switch: on x86-64 a 20-instruction assembly switch (callee-saved registers, MXCSR and
 * the x87 control word, reloaded only when they differ: ldmxcsr/fldcw were 5% of a round-robin
 * run); elsewhere ucontext (swapcontext also saves the signal mask with a
 * syscall per switch, which is why x86-64 avoids it).
 */
#include "emu_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <dlfcn.h>
#include <link.h>
#include <sys/syscall.h>
#include <ucontext.h>

#if !defined(__x86_64__) || defined(UPDLRM_EMU_FORCE_UCONTEXT)
#include <ucontext.h>
#define EMU_USE_UCONTEXT 1
#endif

/* initial-exec: one TLS read per runtime call instead of a __tls_get_addr call */
static __thread struct emu_sched *tls_sched __attribute__((tls_model("initial-exec")));

EMU_HIDDEN uint64_t emu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------ */
/* Context switch                                                                              */

#ifndef EMU_USE_UCONTEXT
/* void updlrm_emu_ctx_switch(void **save_sp, void *load_sp) */
void updlrm_emu_ctx_switch(void **save_sp, void *load_sp) __attribute__((visibility("hidden")));
void updlrm_emu_ctx_start(void) __attribute__((visibility("hidden")));
__asm__(".text\n"
        ".p2align 4\n"
        ".globl updlrm_emu_ctx_switch\n"
        ".hidden updlrm_emu_ctx_switch\n"
        ".type updlrm_emu_ctx_switch,@function\n"
        "updlrm_emu_ctx_switch:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movl (%rsp), %eax\n"
        "  movzwl 4(%rsp), %ecx\n"
        "  movq %rsi, %rsp\n"
        /* ldmxcsr/fldcw stall the pipeline: restore only what differs (kernels rarely change them) */
        "  cmpl (%rsp), %eax\n"
        "  je 1f\n"
        "  ldmxcsr (%rsp)\n"
        "1:\n"
        "  cmpw 4(%rsp), %cx\n"
        "  je 2f\n"
        "  fldcw 4(%rsp)\n"
        "2:\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size updlrm_emu_ctx_switch, .-updlrm_emu_ctx_switch\n"
        ".p2align 4\n"
        ".globl updlrm_emu_ctx_start\n"
        ".hidden updlrm_emu_ctx_start\n"
        ".type updlrm_emu_ctx_start,@function\n"
        "updlrm_emu_ctx_start:\n"
        "  movq %r12, %rdi\n"
        "  callq *%rbx\n"
        "  ud2\n"
        ".size updlrm_emu_ctx_start, .-updlrm_emu_ctx_start\n");

/* Builds the first frame of a coroutine so that switching to it calls fn(arg). */
static void *ctx_make(uint8_t *stack_hi, void (*fn)(void *), void *arg)
{
    uintptr_t top = ((uintptr_t)stack_hi & ~(uintptr_t)15) - 16;
    uint64_t *sp = (uint64_t *)(top - 64);
    sp[0] = 0x1F80ull | (0x037Full << 32); /* MXCSR default, x87 control word default */
    sp[1] = 0;                             /* r15 */
    sp[2] = 0;                             /* r14 */
    sp[3] = 0;                             /* r13 */
    sp[4] = (uint64_t)(uintptr_t)arg;      /* r12 */
    sp[5] = (uint64_t)(uintptr_t)fn;       /* rbx */
    sp[6] = 0;                             /* rbp */
    sp[7] = (uint64_t)(uintptr_t)updlrm_emu_ctx_start;
    return sp;
}
#endif

static void tasklet_entry(void *arg);

#ifdef EMU_USE_UCONTEXT
static void tasklet_entry_uctx(unsigned lo, unsigned hi)
{
    tasklet_entry((void *)(((uintptr_t)hi << 32) | (uintptr_t)lo));
}
#endif

/* Switches from the running tasklet back to the scheduler. */
static void to_scheduler(struct emu_sched *s)
{
    struct emu_tasklet *t = &s->t[s->current];
#ifdef EMU_USE_UCONTEXT
    swapcontext((ucontext_t *)t->uctx, (ucontext_t *)s->sched_uctx);
#else
    updlrm_emu_ctx_switch(&t->sp, s->sched_sp);
#endif
}

static void to_tasklet(struct emu_sched *s, uint32_t i)
{
    s->current = i;
    s->in_tasklet = 1;
#ifdef EMU_USE_UCONTEXT
    swapcontext((ucontext_t *)s->sched_uctx, (ucontext_t *)s->t[i].uctx);
#else
    updlrm_emu_ctx_switch(&s->sched_sp, s->t[i].sp);
#endif
    s->in_tasklet = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Faults                                                                                      */

static void fault_set(struct emu_sched *s, uint32_t tasklet, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fault_set(struct emu_sched *s, uint32_t tasklet, const char *fmt, ...)
{
    if (s->faulted)
        return;
    s->faulted = 1;
    struct emu_dpu *d = s->dpu;
    d->fault_tasklet = tasklet;
    int n = 0;
    if (tasklet != EMU_NO_TASKLET)
        n = snprintf(d->fault_msg, sizeof d->fault_msg, "tasklet %u: ", tasklet);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->fault_msg + n, sizeof d->fault_msg - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Faults the DPU from inside a tasklet: never returns (the coroutine is abandoned). */
static void fault_here(struct emu_sched *s, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void fault_here(struct emu_sched *s, const char *fmt, ...)
{
    char msg[EMU_MSG_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fault_set(s, s->current, "%s", msg);
    s->t[s->current].state = T_DONE;
    to_scheduler(s);
    /* The scheduler never resumes a faulted DPU's tasklets. */
    __builtin_unreachable();
}

/* ------------------------------------------------------------------------------------------ */
/* MRAM backing store                                                                          */

EMU_HIDDEN int emu_mram_write(struct emu_dpu *dpu, uint32_t off, const void *src, size_t n)
{
    const uint8_t *p = (const uint8_t *)src;
    while (n > 0) {
        uint32_t page = off >> EMU_PAGE_SHIFT, in = off & (EMU_PAGE_SIZE - 1);
        size_t chunk = EMU_PAGE_SIZE - in;
        if (chunk > n)
            chunk = n;
        if (!dpu->mram_pages[page]) {
            /* Writing zeros into an untouched page changes nothing: keep it lazy. */
            int all_zero = 1;
            size_t i = 0;
            for (; i + 8 <= chunk; i += 8) { /* a word at a time: pushes of padding stay cheap */
                uint64_t v;
                memcpy(&v, p + i, 8);
                if (v) {
                    all_zero = 0;
                    break;
                }
            }
            for (; all_zero && i < chunk; i++)
                if (p[i])
                    all_zero = 0;
            if (!all_zero) {
                dpu->mram_pages[page] = (uint8_t *)calloc(1, EMU_PAGE_SIZE);
                if (!dpu->mram_pages[page])
                    return -1;
            }
        }
        if (dpu->mram_pages[page])
            memcpy(dpu->mram_pages[page] + in, p, chunk);
        p += chunk;
        off += (uint32_t)chunk;
        n -= chunk;
    }
    return 0;
}

EMU_HIDDEN void emu_mram_read(const struct emu_dpu *dpu, uint32_t off, void *dst, size_t n)
{
    uint8_t *p = (uint8_t *)dst;
    while (n > 0) {
        uint32_t page = off >> EMU_PAGE_SHIFT, in = off & (EMU_PAGE_SIZE - 1);
        size_t chunk = EMU_PAGE_SIZE - in;
        if (chunk > n)
            chunk = n;
        if (dpu->mram_pages[page])
            memcpy(p, dpu->mram_pages[page] + in, chunk);
        else
            memset(p, 0, chunk);
        p += chunk;
        off += (uint32_t)chunk;
        n -= chunk;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Runtime functions called by kernels                                                         */

static unsigned rt_me(void)
{
    struct emu_sched *s = tls_sched;
    return s ? s->current : 0;
}

/* Is [p, p+n) a WRAM range the kernel may DMA to/from? */
static int wram_ok(struct emu_sched *s, const void *p, size_t n, int dma_source)
{
    uintptr_t a = (uintptr_t)p, e = a + n;
    const struct emu_image *img = s->image;
    if (a >= (uintptr_t)img->wram_start && e <= (uintptr_t)img->wram_end)
        return 1;
    if (a >= (uintptr_t)s->heap && e <= (uintptr_t)s->heap + s->heap_top)
        return 1;
    for (uint32_t i = 0; i < s->nr_tasklets; i++)
        if (a >= (uintptr_t)s->t[i].stack_lo && e <= (uintptr_t)s->t[i].stack_hi)
            return 1;
    if (dma_source) {
        /* Constant data of the kernel (on a DPU, .rodata lives in WRAM too). */
        Dl_info info;
        void *base_of_kernel = NULL;
        Dl_info kinfo;
        if (dladdr((const void *)img->main_fn, &kinfo))
            base_of_kernel = kinfo.dli_fbase;
        if (dladdr(p, &info) && base_of_kernel && info.dli_fbase == base_of_kernel &&
            dladdr((const char *)p + n - 1, &info) && info.dli_fbase == base_of_kernel)
            return 1;
    }
    return 0;
}

/* Translates a kernel MRAM pointer to a DPU MRAM offset; returns 0 when it is not in MRAM. */
static int mram_offset(struct emu_sched *s, const void *p, uint32_t *off)
{
    uintptr_t a = (uintptr_t)p;
    const struct emu_image *img = s->image;
    if (a >= (uintptr_t)img->mram_start && a < (uintptr_t)img->mram_end) {
        *off = (uint32_t)(a - (uintptr_t)img->mram_start);
        return 1;
    }
    if (a >= (uintptr_t)img->mramz_start && a < (uintptr_t)img->mramz_end) {
        *off = s->prog->mram_init_size + (uint32_t)(a - (uintptr_t)img->mramz_start);
        return 1;
    }
    if (a >= EMU_MRAM_BASE && a < (uintptr_t)EMU_MRAM_BASE + EMU_MRAM_SIZE) {
        *off = (uint32_t)(a - EMU_MRAM_BASE);
        return 1;
    }
    return 0;
}

/* The run queue: runnable tasklets in the order they became runnable (FIFO). A tasklet that is
 * woken or yields goes to the back, so a tasklet released earlier reaches its next DMA earlier,
 * as with the DPU's equal-progress interleaving (e.g. in a handshake chain, the notifier's DMA
 * comes before the waiter's). */
static inline void rq_push(struct emu_sched *s, uint32_t i)
{
    uint32_t n = s->nr_tasklets, tail = s->rq_head + s->rq_len;
    s->rq[tail < n ? tail : tail - n] = i;
    s->rq_len++;
}

static inline uint32_t rq_pop(struct emu_sched *s)
{
    uint32_t i = s->rq[s->rq_head];
    s->rq_head = s->rq_head + 1 == s->nr_tasklets ? 0 : s->rq_head + 1;
    s->rq_len--;
    return i;
}

/* A scheduling point in a tasklet: under the round-robin and random policies the tasklet stays
 * runnable and the scheduler picks who runs next; under "run" nothing happens. */
static inline void sched_point(struct emu_sched *s)
{
    if (__builtin_expect(s->deadline_hit, 0))
        fault_here(s, "launch timed out after %u ms (an endless loop?)", s->set->timeout_ms);
    if (s->policy == EMU_POLICY_RUN || s->nr_tasklets == 1)
        return;
#ifndef EMU_USE_UCONTEXT
    if (s->policy == EMU_POLICY_RR) {
        /* Round-robin over the run queue, handing over directly to the next tasklet: one switch
         * instead of two through the scheduler, which only runs when a tasklet blocks or ends. */
        if (s->rq_len == 0)
            return; /* the only runnable tasklet: go on */
        uint32_t cur = s->current, i = rq_pop(s);
        rq_push(s, cur);
        s->current = i;
        s->switches++;
        updlrm_emu_ctx_switch(&s->t[cur].sp, s->t[i].sp);
        return; /* resumed: whoever switched back set s->current = cur */
    }
#endif
    rq_push(s, s->current); /* the scheduler takes the next one from the queue */
    to_scheduler(s);
}

/* A scheduling point right after this tasklet released `woken` others (now the last entries of
 * the queue): it stays ahead of them, as on a DPU the releasing tasklet goes on at once while the
 * released ones are dispatched again later. Under the random policy all orders are possible. */
static void sched_point_after_wake(struct emu_sched *s, uint32_t woken)
{
    if (s->policy != EMU_POLICY_RR || woken == 0 || woken > s->rq_len || s->nr_tasklets == 1) {
        sched_point(s);
        return;
    }
    uint32_t n = s->nr_tasklets;
    /* insert current before the last `woken` entries */
    uint32_t pos = s->rq_len - woken;
    for (uint32_t j = s->rq_len; j > pos; j--) {
        uint32_t a = s->rq_head + j < n ? s->rq_head + j : s->rq_head + j - n;
        uint32_t b = a == 0 ? n - 1 : a - 1;
        s->rq[a] = s->rq[b];
    }
    uint32_t at = s->rq_head + pos < n ? s->rq_head + pos : s->rq_head + pos - n;
    s->rq[at] = s->current;
    s->rq_len++;
    uint32_t cur = s->current, i = rq_pop(s);
    if (i == cur)
        return;
    s->current = i;
    s->switches++;
#ifndef EMU_USE_UCONTEXT
    updlrm_emu_ctx_switch(&s->t[cur].sp, s->t[i].sp);
#else
    s->current = cur;
    /* ucontext: let the scheduler run i next (it is at the head again) */
    s->rq_head = s->rq_head == 0 ? n - 1 : s->rq_head - 1;
    s->rq[s->rq_head] = i;
    s->rq_len++;
    to_scheduler(s);
#endif
}

static void rt_yield(void)
{
    struct emu_sched *s = tls_sched;
    if (s)
        sched_point(s);
}

/* Static MRAM variables touched directly by kernel code: the image's __mram sections are kept
 * inaccessible; the first direct access of a DPU's run faults, on_signal makes them accessible
 * and copies the DPU's MRAM bytes in (mirror_activate), and from then on until the DPU's run
 * ends the sections hold those bytes: DMAs to their offsets go there too (mirror_at), and the
 * bytes are copied back into MRAM at the end (mirror_finish). A kernel that only uses
 * mram_read/mram_write never pays for this. mirror_at: where MRAM offset `off` lives now, or
 * NULL when it is in MRAM proper. */
static uint8_t *mirror_at(struct emu_sched *s, uint32_t off)
{
    const struct emu_program *p = s->prog;
    if (!s->mirror_active || off >= p->mram_static)
        return NULL;
    if (off < p->mram_init_size)
        return s->image->mram_start + off;
    return s->image->mramz_start + (off - p->mram_init_size);
}

/* Copies n bytes between WRAM and MRAM offset `off`, through the mirror where it applies. */
static int mram_copy(struct emu_sched *s, int is_write, uint32_t off, void *wram_p, unsigned n)
{
    struct emu_dpu *d = s->dpu;
    uint32_t floor = s->fast_floor;
    while (n > 0 && off < floor) { /* the mirrored part, in pieces that stay in one section */
        const struct emu_program *p = s->prog;
        uint32_t end = off < p->mram_init_size ? p->mram_init_size : p->mram_static;
        unsigned k = end - off < n ? end - off : n;
        uint8_t *m = mirror_at(s, off);
        if (is_write)
            memcpy(m, wram_p, k);
        else
            memcpy(wram_p, m, k);
        off += k;
        wram_p = (uint8_t *)wram_p + k;
        n -= k;
    }
    if (n == 0)
        return 0;
    if (is_write)
        return emu_mram_write(d, off, wram_p, n);
    emu_mram_read(d, off, wram_p, n);
    return 0;
}

/* The checked DMA: finds and reports any violation (the slow path, taken when the fast path in
 * dma() cannot prove the access good), then does the copy. */
static void dma_checked(struct emu_sched *s, int is_write, const void *mram_p, void *wram_p, unsigned n)
{
    const char *op = is_write ? "mram_write" : "mram_read";
    uint32_t off = 0;
    int in_mram = mram_offset(s, mram_p, &off);
    struct emu_dpu *d = s->dpu;
    if (!in_mram && !s->strict && (uintptr_t)mram_p < EMU_MRAM_SIZE) {
        /* Hardware decodes the low 26 bits: a heap offset given without the MRAM base works. */
        off = (uint32_t)(uintptr_t)mram_p;
        in_mram = 1;
        d->counters.mram_rebased_ops++;
    }
    if (!s->strict && in_mram && ((off | (uint32_t)(uintptr_t)wram_p) & 7u) != 0) {
        /* Hardware ignores the low 3 bits of both DMA addresses. */
        off &= ~7u;
        wram_p = (void *)((uintptr_t)wram_p & ~(uintptr_t)7);
        d->counters.mram_realigned_ops++;
    }
    uint32_t shown = in_mram ? EMU_MRAM_BASE + off : (uint32_t)(uintptr_t)mram_p;
#define EMU_DMA_FMT(what) "%s " what " (mram 0x%08x %s wram %p, %u bytes)"
#define EMU_DMA_ARGS op, shown, is_write ? "<-" : "->", wram_p, n
    if (n < 8 || n > 2048 || (n % 8) != 0)
        fault_here(s, "%s size %u is not a multiple of 8 in [8, 2048] (mram 0x%08x %s wram %p)", op, n, shown,
                   is_write ? "<-" : "->", wram_p);
    if (!in_mram)
        fault_here(s, "%s: MRAM address %p is outside MRAM [0x%08x, 0x%08x) (wram %p, %u bytes)", op, mram_p,
                   EMU_MRAM_BASE, EMU_MRAM_BASE + EMU_MRAM_SIZE, wram_p, n);
    if ((uint64_t)off + n > EMU_MRAM_SIZE)
        fault_here(s, "%s: MRAM range [0x%08x, 0x%08llx) runs past the end of MRAM 0x%08x (wram %p)", op,
                   EMU_MRAM_BASE + off, (unsigned long long)EMU_MRAM_BASE + off + n, EMU_MRAM_BASE + EMU_MRAM_SIZE,
                   wram_p);
    if (off % 8 != 0)
        fault_here(s, EMU_DMA_FMT("MRAM address is not 8-byte aligned"), EMU_DMA_ARGS);
    if ((uintptr_t)wram_p % 8 != 0)
        fault_here(s, EMU_DMA_FMT("WRAM address is not 8-byte aligned"), EMU_DMA_ARGS);
    if (!wram_ok(s, wram_p, n, is_write))
        fault_here(s,
                   EMU_DMA_FMT("WRAM range is not inside WRAM globals, a mem_alloc block or a tasklet stack"),
                   EMU_DMA_ARGS);
#undef EMU_DMA_FMT
#undef EMU_DMA_ARGS
    uint32_t t = s->current;
    if (is_write) {
        if (mram_copy(s, 1, off, wram_p, n) != 0)
            fault_here(s, "mram_write: the host is out of memory for MRAM backing pages");
        d->counters.dma_write_ops[t]++;
        d->counters.dma_write_bytes[t] += n;
        s->cycles += EMU_DMA_WRITE_ALPHA + n / 2;
    } else {
        mram_copy(s, 0, off, wram_p, n);
        d->counters.dma_read_ops[t]++;
        d->counters.dma_read_bytes[t] += n;
        s->cycles += EMU_DMA_READ_ALPHA + n / 2;
    }
}

/* A DMA between a kernel MRAM pointer and WRAM. Hot path of every kernel: the common case (an
 * address in the MRAM window, size in [8, 2048] and a multiple of 8, both addresses 8-byte
 * aligned, inside MRAM and inside one backing page, WRAM range inside the WRAM globals or the
 * heap allocated so far) is proven good with a few integer compares; anything else goes through
 * dma_checked(), which runs every check in order and reports the first violation exactly as
 * before. Counters and the cycle model are the same on both paths. */
static inline __attribute__((always_inline)) void dma(int is_write, const void *mram_p, void *wram_p, unsigned n)
{
    struct emu_sched *s = tls_sched;
    if (__builtin_expect(!s, 0))
        return;
    uintptr_t a = (uintptr_t)mram_p, w = (uintptr_t)wram_p;
    uint32_t off = (uint32_t)(a - EMU_MRAM_BASE);
    const struct emu_image *img = s->image;
    /* (n - 8) <= 2040 rejects n < 8 (wraps) and n > 2048; one OR tests all three alignments */
    int fast = !s->mram_alias && a - EMU_MRAM_BASE < EMU_MRAM_SIZE && off >= s->fast_floor &&
               (unsigned)(n - 8u) <= 2040u &&
               ((n | off | (uint32_t)w) & 7u) == 0 &&
               (off & (EMU_PAGE_SIZE - 1)) + n <= EMU_PAGE_SIZE && /* also proves off + n <= MRAM size */
               ((w >= (uintptr_t)img->wram_start && w + n <= (uintptr_t)img->wram_end) ||
                (w >= (uintptr_t)s->heap && w + n <= (uintptr_t)s->heap + s->heap_top));
    if (__builtin_expect(!fast, 0)) {
        dma_checked(s, is_write, mram_p, wram_p, n);
        sched_point(s);
        return;
    }
    struct emu_dpu *d = s->dpu;
    uint32_t t = s->current;
    uint8_t *page = d->mram_pages[off >> EMU_PAGE_SHIFT];
    uint32_t in = off & (EMU_PAGE_SIZE - 1);
    if (is_write) {
        if (__builtin_expect(page != NULL, 1))
            memcpy(page + in, wram_p, n);
        else if (emu_mram_write(d, off, wram_p, n) != 0)
            fault_here(s, "mram_write: the host is out of memory for MRAM backing pages");
        d->counters.dma_write_ops[t]++;
        d->counters.dma_write_bytes[t] += n;
        s->cycles += EMU_DMA_WRITE_ALPHA + n / 2;
    } else {
        d->counters.dma_read_ops[t]++;
        d->counters.dma_read_bytes[t] += n;
        s->cycles += EMU_DMA_READ_ALPHA + n / 2;
        /* The copy happens at issue, then the other tasklets run (as they do while a DMA is in
         * flight). Prefetching the source and copying on resume was measured slower on the
         * project's kernel (docs/EMULATOR.md, "Scheduling cost"). */
        if (__builtin_expect(page != NULL, 1))
            memcpy(wram_p, page + in, n);
        else
            memset(wram_p, 0, n);
    }
    sched_point(s);
}

static void rt_mram_read(const void *from, void *to, unsigned n) { dma(0, from, to, n); }
static void rt_mram_write(const void *from, void *to, unsigned n) { dma(1, to, (void *)from, n); }

static void *rt_mem_alloc(size_t size)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return NULL;
    size_t rounded = (size + 7) & ~(size_t)7;
    uint32_t limit = s->prog->heap_limit;
    if (size > limit || rounded > (size_t)(limit - s->heap_top))
        fault_here(s,
                   "mem_alloc(%zu) exceeds the WRAM heap: %u of %u bytes left (64 KiB - %zu B static data - "
                   "%u tasklets x %u B stacks)",
                   size, limit - s->heap_top, limit, s->prog->wram_size, s->prog->nr_tasklets,
                   s->prog->stack_size);
    void *p = s->heap + s->heap_top;
    s->heap_top += (uint32_t)rounded;
    if (s->heap_top > s->heap_peak)
        s->heap_peak = s->heap_top;
    return p;
}

static void rt_mem_reset(void)
{
    struct emu_sched *s = tls_sched;
    if (s)
        s->heap_top = 0;
}

static void *rt_mram_heap_pointer(void)
{
    struct emu_sched *s = tls_sched;
    uint32_t off = s ? s->prog->mram_static : 0;
    return (void *)(uintptr_t)(EMU_MRAM_BASE + off);
}

static struct emu_sync_obj *sync_obj(struct emu_sched *s, const void *addr)
{
    for (uint32_t i = 0; i < s->nr_objs; i++)
        if (s->objs[i].addr == addr)
            return &s->objs[i];
    if (s->nr_objs == EMU_MAX_SYNC_OBJECTS)
        fault_here(s, "more than %u distinct barriers, mutexes and semaphores", EMU_MAX_SYNC_OBJECTS);
    struct emu_sync_obj *o = &s->objs[s->nr_objs++];
    memset(o, 0, sizeof *o);
    o->addr = addr;
    return o;
}

static void block(struct emu_sched *s, enum emu_wait_kind kind, const void *obj, uint32_t arg)
{
    struct emu_tasklet *t = &s->t[s->current];
    t->state = T_BLOCKED;
    t->wait = kind;
    t->wait_obj = obj;
    t->wait_arg = arg;
    to_scheduler(s);
}

static void wake_t(struct emu_sched *s, uint32_t i)
{
    struct emu_tasklet *t = &s->t[i];
    rq_push(s, i);
    t->state = T_RUNNABLE;
    t->wait = W_NONE;
    t->wait_obj = NULL;
}

static void rt_barrier_wait(struct updlrm_emu_barrier *b)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return;
    struct emu_sync_obj *o = sync_obj(s, b);
    if (o->waiting == 0)
        o->target = b->initial_count; /* a phase starts: the count is read once per phase */
    if (o->target == 0 || o->target > s->nr_tasklets)
        fault_here(s, "barrier_wait on a barrier for %u tasklets, but the DPU runs %u tasklets (deadlock)", o->target,
                   s->nr_tasklets);
    o->waiting++;
    if (o->waiting >= o->target) {
        o->waiting = 0;
        uint32_t woken = 0;
        for (uint32_t i = 0; i < s->nr_tasklets; i++)
            if (s->t[i].state == T_BLOCKED && s->t[i].wait == W_BARRIER && s->t[i].wait_obj == b) {
                wake_t(s, i);
                woken++;
            }
        sched_point_after_wake(s, woken);
        return;
    }
    block(s, W_BARRIER, b, o->target);
}

static void rt_mutex_lock(struct updlrm_emu_mutex *m)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return;
    struct emu_sync_obj *o = sync_obj(s, m);
    if (!o->locked) {
        o->locked = 1;
        o->owner = s->current;
        sched_point(s);
        return;
    }
    if (o->owner == s->current)
        fault_here(s, "mutex_lock on a mutex this tasklet already holds (deadlock)");
    block(s, W_MUTEX, m, 0); /* ownership is handed over by mutex_unlock */
}

static int rt_mutex_trylock(struct updlrm_emu_mutex *m)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return 1;
    struct emu_sync_obj *o = sync_obj(s, m);
    if (o->locked)
        return 0;
    o->locked = 1;
    o->owner = s->current;
    return 1;
}

static void rt_mutex_unlock(struct updlrm_emu_mutex *m)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return;
    struct emu_sync_obj *o = sync_obj(s, m);
    if (!o->locked)
        fault_here(s, "mutex_unlock on a mutex that is not locked");
    /* Hand the mutex to the next waiter in tasklet order after the current one. */
    for (uint32_t k = 1; k <= s->nr_tasklets; k++) {
        uint32_t i = (s->current + k) % s->nr_tasklets;
        if (s->t[i].state == T_BLOCKED && s->t[i].wait == W_MUTEX && s->t[i].wait_obj == m) {
            o->owner = i;
            wake_t(s, i);
            sched_point_after_wake(s, 1);
            return;
        }
    }
    o->locked = 0;
    sched_point(s);
}

static void rt_sem_take(struct updlrm_emu_sem *sem)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return;
    if (sem->value > 0) {
        sem->value--;
        sched_point(s);
        return;
    }
    block(s, W_SEM, sem, 0); /* sem_give hands the unit over directly */
}

static void rt_sem_give(struct updlrm_emu_sem *sem)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return;
    for (uint32_t k = 1; k <= s->nr_tasklets; k++) {
        uint32_t i = (s->current + k) % s->nr_tasklets;
        if (s->t[i].state == T_BLOCKED && s->t[i].wait == W_SEM && s->t[i].wait_obj == sem) {
            wake_t(s, i);
            sched_point_after_wake(s, 1);
            return;
        }
    }
    sem->value++;
    sched_point(s);
}

static int rt_handshake_notify(void)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return 0;
    for (uint32_t i = 0; i < s->nr_tasklets; i++)
        if (s->t[i].state == T_BLOCKED && s->t[i].wait == W_WAIT_FOR && s->t[i].wait_arg == s->current) {
            wake_t(s, i);
            sched_point_after_wake(s, 1);
            return 0;
        }
    block(s, W_NOTIFY, NULL, 0);
    return 0;
}

static int rt_handshake_wait_for(unsigned notifier)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return 0;
    if (notifier >= s->nr_tasklets || notifier == s->current)
        fault_here(s, "handshake_wait_for(%u): no such other tasklet (NR_TASKLETS = %u)", notifier, s->nr_tasklets);
    struct emu_tasklet *n = &s->t[notifier];
    if (n->state == T_BLOCKED && n->wait == W_NOTIFY) {
        wake_t(s, notifier);
        sched_point_after_wake(s, 1);
        return 0;
    }
    block(s, W_WAIT_FOR, NULL, notifier);
    return 0;
}

static void rt_perfcounter_config(int mode, int reset)
{
    (void)mode;
    struct emu_sched *s = tls_sched;
    if (s && reset)
        s->perf_base = s->cycles;
}

static uint64_t rt_perfcounter_get(void)
{
    struct emu_sched *s = tls_sched;
    return s ? s->cycles - s->perf_base : 0;
}

static int rt_vprintf(const char *fmt, va_list ap)
{
    struct emu_sched *s = tls_sched;
    if (!s)
        return 0;
    struct emu_dpu *d = s->dpu;
    char small[512];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap2);
    va_end(ap2);
    if (n <= 0)
        return n;
    if (d->log_len + (size_t)n > EMU_LOG_CAP) {
        d->log_truncated = 1;
        return n;
    }
    if (!d->log) {
        d->log = (char *)malloc(EMU_LOG_CAP + 1);
        if (!d->log) {
            d->log_truncated = 1;
            return n;
        }
    }
    if ((size_t)n < sizeof small)
        memcpy(d->log + d->log_len, small, (size_t)n);
    else
        vsnprintf(d->log + d->log_len, (size_t)n + 1, fmt, ap);
    d->log_len += (size_t)n;
    d->log[d->log_len] = '\0';
    return n;
}

/* Does not return inside a launch; outside one (e.g. a kernel constructor) it does nothing. */
static void rt_fault(const char *reason)
{
    struct emu_sched *s = tls_sched;
    if (s)
        fault_here(s, "%s", reason);
}

EMU_HIDDEN const struct updlrm_emu_rt emu_rt_table = {
    .version = UPDLRM_EMU_RT_VERSION,
    .reserved = 0,
    .me = rt_me,
    .mram_read = rt_mram_read,
    .mram_write = rt_mram_write,
    .mem_alloc = rt_mem_alloc,
    .mem_reset = rt_mem_reset,
    .mram_heap_pointer = rt_mram_heap_pointer,
    .barrier_wait = rt_barrier_wait,
    .mutex_lock = rt_mutex_lock,
    .mutex_unlock = rt_mutex_unlock,
    .mutex_trylock = rt_mutex_trylock,
    .sem_take = rt_sem_take,
    .sem_give = rt_sem_give,
    .handshake_notify = rt_handshake_notify,
    .handshake_wait_for = rt_handshake_wait_for,
    .perfcounter_config = rt_perfcounter_config,
    .perfcounter_get = rt_perfcounter_get,
    .vprintf = rt_vprintf,
    .fault = rt_fault,
    .yield = rt_yield,
};

/* ------------------------------------------------------------------------------------------ */
/* Scheduler                                                                                   */

static void tasklet_entry(void *arg)
{
    struct emu_sched *s = (struct emu_sched *)arg;
    s->image->main_fn();
    s->t[s->current].state = T_DONE;
    to_scheduler(s);
    __builtin_unreachable();
}

/* dl_iterate_phdr callback: the executable segments of the image loaded at s->image_base. */
static int find_code(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct emu_sched *s = (struct emu_sched *)arg;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    int mine = 0;
    for (unsigned i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t a = info->dlpi_addr + ph->p_vaddr, b = a + ph->p_memsz;
        if ((uintptr_t)s->image->main_fn >= a && (uintptr_t)s->image->main_fn < b)
            mine = 1;
        if (ph->p_flags & PF_X) {
            lo = a < lo ? a : lo;
            hi = b > hi ? b : hi;
        }
    }
    if (!mine)
        return 0;
    s->code_lo = lo;
    s->code_hi = hi;
    return 1;
}

EMU_HIDDEN int emu_sched_init(struct emu_sched *s, struct emu_program *prog, struct emu_image *image)
{
    memset(s, 0, sizeof *s);
    s->prog = prog;
    s->image = image;
    s->nr_tasklets = prog->nr_tasklets;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    s->stacks_bytes = (size_t)s->nr_tasklets * EMU_HOST_STACK_BYTES;
    void *m = mmap(NULL, s->stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -1;
    s->stacks = (uint8_t *)m;
    for (uint32_t i = 0; i < s->nr_tasklets; i++) {
        uint8_t *lo = s->stacks + (size_t)i * EMU_HOST_STACK_BYTES;
        mprotect(lo, page, PROT_NONE); /* guard page: a host stack overflow crashes loudly */
        s->t[i].stack_lo = lo + page;
        s->t[i].stack_hi = lo + EMU_HOST_STACK_BYTES;
    }
    /* The DMA fast path reads addresses in the MRAM window as MRAM offsets; where the image's own
     * __mram sections would overlap that window (never seen on x86-64 Linux), keep the exact
     * lookup order of mram_offset() by always taking the checked path. */
    uintptr_t lo_w = EMU_MRAM_BASE, hi_w = (uintptr_t)EMU_MRAM_BASE + EMU_MRAM_SIZE;
    s->mram_alias = ((uintptr_t)image->mram_start < hi_w && (uintptr_t)image->mram_end > lo_w) ||
                    ((uintptr_t)image->mramz_start < hi_w && (uintptr_t)image->mramz_end > lo_w);
    s->heap = (uint8_t *)aligned_alloc(64, EMU_WRAM_SIZE);
    if (!s->heap)
        return -1;
    s->altstack = (uint8_t *)malloc(EMU_ALTSTACK_BYTES);
    Dl_info info;
    if (dladdr((const void *)image->main_fn, &info))
        s->image_base = info.dli_fbase;
    dl_iterate_phdr(find_code, s);
    memset(s->heap, 0, EMU_WRAM_SIZE);
#ifdef EMU_USE_UCONTEXT
    s->sched_uctx = calloc(1, sizeof(ucontext_t));
    for (uint32_t i = 0; i < s->nr_tasklets; i++)
        s->t[i].uctx = calloc(1, sizeof(ucontext_t));
#endif
    return 0;
}

EMU_HIDDEN void emu_sched_fini(struct emu_sched *s)
{
    if (s->stacks)
        munmap(s->stacks, s->stacks_bytes);
    free(s->heap);
    free(s->altstack);
#ifdef EMU_USE_UCONTEXT
    free(s->sched_uctx);
    for (uint32_t i = 0; i < EMU_MAX_TASKLETS; i++)
        free(s->t[i].uctx);
#endif
    memset(s, 0, sizeof *s);
}

/* Describes why no tasklet can run (all remaining ones blocked). */
static void fault_deadlock(struct emu_sched *s)
{
    uint32_t blocked = 0, done = 0, first = EMU_NO_TASKLET;
    for (uint32_t i = 0; i < s->nr_tasklets; i++) {
        if (s->t[i].state == T_BLOCKED) {
            blocked++;
            if (first == EMU_NO_TASKLET)
                first = i;
        } else if (s->t[i].state == T_DONE)
            done++;
    }
    const struct emu_tasklet *t = &s->t[first];
    const char *what = "a synchronization call";
    switch (t->wait) {
    case W_BARRIER: what = "barrier_wait"; break;
    case W_MUTEX: what = "mutex_lock"; break;
    case W_SEM: what = "sem_take"; break;
    case W_NOTIFY: what = "handshake_notify"; break;
    case W_WAIT_FOR: what = "handshake_wait_for"; break;
    default: break;
    }
    if (t->wait == W_BARRIER) {
        uint32_t waiting = 0;
        for (uint32_t i = 0; i < s->nr_tasklets; i++)
            if (s->t[i].state == T_BLOCKED && s->t[i].wait == W_BARRIER && s->t[i].wait_obj == t->wait_obj)
                waiting++;
        fault_set(s, first,
                  "deadlock in barrier_wait: the barrier expects %u tasklets but only %u wait on it "
                  "(%u tasklets blocked, %u ended)",
                  t->wait_arg, waiting, blocked, done);
    } else {
        fault_set(s, first, "deadlock in %s: %u tasklets blocked, %u ended, none can run", what, blocked, done);
    }
}

static void mirror_protect(struct emu_image *img, int prot)
{
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uint8_t *rs[2] = {img->mram_start, img->mramz_start}, *re[2] = {img->mram_end, img->mramz_end};
    for (int k = 0; k < 2; k++) {
        /* kernel.ld gives each section whole pages; never touch a page it does not own */
        uintptr_t a = (uintptr_t)rs[k], b = ((uintptr_t)re[k] + pg - 1) & ~(pg - 1);
        if (rs[k] && re[k] > rs[k] && (a & (pg - 1)) == 0)
            mprotect((void *)a, b - a, prot);
    }
}

EMU_HIDDEN void emu_mirror_init(struct emu_image *img) { mirror_protect(img, PROT_NONE); }

static int in_image_mram(const struct emu_image *img, uintptr_t a)
{
    return (img->mram_start && a >= (uintptr_t)img->mram_start && a < (uintptr_t)img->mram_end) ||
           (img->mramz_start && a >= (uintptr_t)img->mramz_start && a < (uintptr_t)img->mramz_end);
}

/* In the signal handler (only syscalls and copies): the first direct access of this run. */
static void mirror_activate(struct emu_sched *s)
{
    const struct emu_program *p = s->prog;
    mirror_protect(s->image, PROT_READ | PROT_WRITE);
    emu_mram_read(s->dpu, 0, s->image->mram_start, p->mram_init_size);
    emu_mram_read(s->dpu, p->mram_init_size, s->image->mramz_start, p->mram_static - p->mram_init_size);
    s->mirror_active = 1;
    s->fast_floor = p->mram_static; /* DMAs below go through mram_copy, hence the mirror */
}

static void mirror_finish(struct emu_sched *s)
{
    const struct emu_program *p = s->prog;
    if (!s->mirror_active)
        return;
    if (emu_mram_write(s->dpu, 0, s->image->mram_start, p->mram_init_size) != 0 ||
        emu_mram_write(s->dpu, p->mram_init_size, s->image->mramz_start, p->mram_static - p->mram_init_size) != 0)
        fault_set(s, EMU_NO_TASKLET, "the host is out of memory for MRAM backing pages");
    mirror_protect(s->image, PROT_NONE);
    s->mirror_active = 0;
    s->fast_floor = 0;
}

static uint64_t rng_next(struct emu_sched *s)
{
    uint64_t x = s->rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* The scheduling loop of one DPU: runs tasklets until all end, one faults, or a deadlock. */
static void schedule(struct emu_sched *s)
{
    uint32_t n = s->nr_tasklets, last = EMU_NO_TASKLET;
    for (;;) {
        if (s->faulted)
            break;
        if (s->deadline_hit) {
            fault_set(s, EMU_NO_TASKLET, "launch timed out after %u ms before this DPU finished (an endless loop, "
                      "or raise the timeout)", s->set->timeout_ms);
            break;
        }
        uint32_t pick = EMU_NO_TASKLET, alive = 0;
        for (uint32_t i = 0; i < n; i++)
            alive += s->t[i].state != T_DONE;
        if (s->rq_len && s->policy == EMU_POLICY_RANDOM) {
            /* any queued tasklet, uniformly: take it out of the queue, keep the others' order */
            uint32_t k = (uint32_t)(rng_next(s) % s->rq_len);
            uint32_t at = s->rq_head + k < n ? s->rq_head + k : s->rq_head + k - n;
            pick = s->rq[at];
            for (uint32_t j = k; j + 1 < s->rq_len; j++) {
                uint32_t a = s->rq_head + j < n ? s->rq_head + j : s->rq_head + j - n;
                uint32_t b = a + 1 < n ? a + 1 : 0;
                s->rq[a] = s->rq[b];
            }
            s->rq_len--;
        } else if (s->rq_len) {
            pick = rq_pop(s);
        }
        if (pick == EMU_NO_TASKLET) {
            if (alive)
                fault_deadlock(s);
            break;
        }
        if (pick != last)
            s->switches++;
        last = pick;
        to_tasklet(s, pick);
    }
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    case SIGTRAP: return "SIGTRAP";
    default: return "a signal";
    }
}

/* Turns what on_signal recorded into the DPU's fault message (outside the signal handler). */
static void crash_report(struct emu_sched *s)
{
    uint32_t t = s->current;
    struct emu_dpu *d = s->dpu;
    char where[256] = "";
    if (s->crash_pc) {
        Dl_info info;
        if (dladdr((void *)s->crash_pc, &info) && info.dli_fbase == s->image_base) {
            char line[200];
            emu_source_line(s->prog->path, s->crash_pc - (uintptr_t)info.dli_fbase, line, sizeof line);
            if (line[0])
                snprintf(where, sizeof where, " at %s", line);
            else if (info.dli_sname)
                snprintf(where, sizeof where, " in %s()", info.dli_sname);
        }
        d->fault_pc = s->crash_pc;
    }
    if (s->crash_sig == 0) {
        fault_set(s, t, "launch timed out after %u ms (an endless loop?)%s", s->set->timeout_ms, where);
        return;
    }
    const char *what = "";
    char detail[200] = "";
    uintptr_t a = (uintptr_t)s->crash_addr;
    const struct emu_image *img = s->image;
    if (s->crash_sig == SIGSEGV || s->crash_sig == SIGBUS) {
        const struct emu_tasklet *tk = &s->t[t];
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        if (a >= (uintptr_t)tk->stack_lo - page && a < (uintptr_t)tk->stack_lo) {
            what = " (stack overflow: the tasklet's host stack of 256 KiB is exhausted; deep recursion?)";
        } else if (in_image_mram(img, a)) {
            Dl_info info;
            const char *name = dladdr((void *)a, &info) && info.dli_sname ? info.dli_sname : "?";
            snprintf(detail, sizeof detail, " (direct access to the __mram variable '%s' failed)", name);
        } else {
            snprintf(detail, sizeof detail, " (invalid memory access at %p)", s->crash_addr);
        }
    } else if (s->crash_sig == SIGFPE) {
        what = " (arithmetic exception: integer division by zero or overflow)";
    } else if (s->crash_sig == SIGABRT) {
        what = " (abort() called)";
    }
    fault_set(s, t, "%s%s%s in kernel code%s", signal_name(s->crash_sig), what, detail, where);
}

static void run_one_dpu(struct emu_sched *s, struct updlrm_emu_set *set, uint32_t index)
{
    struct emu_program *p = s->prog;
    struct emu_dpu *d = &set->dpus[index];
    uint64_t t0 = emu_now_ns();

    /* Per-launch state of this DPU. */
    memset(d->counters.dma_read_ops, 0, sizeof d->counters.dma_read_ops);
    memset(d->counters.dma_read_bytes, 0, sizeof d->counters.dma_read_bytes);
    memset(d->counters.dma_write_ops, 0, sizeof d->counters.dma_write_ops);
    memset(d->counters.dma_write_bytes, 0, sizeof d->counters.dma_write_bytes);
    d->counters.faulted = 0;
    d->fault_msg[0] = '\0';
    d->fault_tasklet = EMU_NO_TASKLET;
    d->log_len = 0;
    d->log_truncated = 0;
    if (d->log)
        d->log[0] = '\0';

    /* Swap this DPU's WRAM in. */
    memcpy(s->image->wram_start, d->wram_saved, p->wram_size);
    /* The DPU's heap: what it used before, zeros beyond (never another DPU's bytes). */
    if (d->heap_saved_len)
        memcpy(s->heap, d->heap_saved, d->heap_saved_len);
    if (s->heap_dirty > d->heap_saved_len)
        memset(s->heap + d->heap_saved_len, 0, s->heap_dirty - d->heap_saved_len);
    s->heap_dirty = d->heap_saved_len;
    s->dpu = d;
    s->dpu_index = index;
    s->set = set;
    s->heap_top = d->heap_top;
    s->heap_peak = d->heap_top;
    s->cycles = 0;
    s->perf_base = 0;
    s->faulted = 0;
    s->nr_objs = 0;
    s->crash_sig = 0;
    s->crash_addr = NULL;
    s->crash_pc = 0;
    s->policy = (set->opt_policy >= 0) ? (enum emu_policy)set->opt_policy
                                       : (p->race_free ? EMU_POLICY_RUN : EMU_POLICY_RR);
    s->strict = set->opt_strict >= 0 ? set->opt_strict : p->strict_default;
    s->rng = (set->opt_seed ^ ((uint64_t)index * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)set->launch_no << 40)) | 1u;
    s->fast_floor = 0;
    s->mirror_active = 0;

    s->rq_head = 0;
    s->rq_len = 0;
    for (uint32_t i = 0; i < s->nr_tasklets; i++) {
        struct emu_tasklet *t = &s->t[i];
        rq_push(s, i);
        t->state = T_RUNNABLE;
        t->wait = W_NONE;
        t->wait_obj = NULL;
#ifdef EMU_USE_UCONTEXT
        ucontext_t *u = (ucontext_t *)t->uctx;
        getcontext(u);
        u->uc_stack.ss_sp = t->stack_lo;
        u->uc_stack.ss_size = (size_t)(t->stack_hi - t->stack_lo);
        u->uc_link = NULL;
        uintptr_t a = (uintptr_t)s;
        makecontext(u, (void (*)(void))tasklet_entry_uctx, 2, (unsigned)(a & 0xffffffffu), (unsigned)(a >> 32));
#else
        t->sp = ctx_make(t->stack_hi, tasklet_entry, s);
#endif
    }

    s->switches = 0;
    tls_sched = s;
    if (sigsetjmp(s->recover, 0) != 0) {
        /* A crash or the deadline in tasklet code (on_signal): the DPU stops here. */
        s->in_tasklet = 0;
        crash_report(s);
    } else {
        schedule(s);
    }
    tls_sched = NULL;
    mirror_finish(s);
    d->counters.switches = s->switches;

    /* Swap this DPU's WRAM out (also after a fault: the hardware keeps WRAM as it is). */
    memcpy(d->wram_saved, s->image->wram_start, p->wram_size);
    /* Keep every heap byte this DPU may have written: up to its high-water mark. */
    uint32_t keep = s->heap_peak > d->heap_saved_len ? s->heap_peak : d->heap_saved_len;
    if (keep > s->heap_dirty)
        s->heap_dirty = keep;
    if (keep > d->heap_saved_cap) {
        uint32_t cap = (keep + 4095u) & ~4095u; /* only what this DPU's heap uses */
        uint8_t *nb = (uint8_t *)realloc(d->heap_saved, cap);
        if (nb) {
            d->heap_saved = nb;
            d->heap_saved_cap = cap;
        }
    }
    if (keep <= d->heap_saved_cap) {
        if (keep)
            memcpy(d->heap_saved, s->heap, keep);
        d->heap_saved_len = keep;
        d->heap_top = s->heap_top;
    } else { /* out of host memory: the heap restarts empty */
        d->heap_saved_len = 0;
        d->heap_top = 0;
    }
    d->counters.wram_heap_peak_bytes = s->heap_peak;
    d->counters.wram_static_bytes = p->wram_static;
    d->counters.nr_tasklets = p->nr_tasklets;
    d->counters.modeled_cycles = s->cycles;
    d->counters.faulted = s->faulted;
    if (d->log_truncated && d->log && d->log_len + 32 <= EMU_LOG_CAP) {
        d->log_len += (size_t)snprintf(d->log + d->log_len, 32, "[log truncated]\n");
    }
    d->counters.wall_ns = emu_now_ns() - t0;
}

/* ------------------------------------------------------------------------------------------ */
/* Isolation: crash and deadline signals                                                      */

static const int crash_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP};
#define EMU_NR_CRASH_SIGNALS (sizeof crash_signals / sizeof crash_signals[0])
static struct sigaction old_actions[EMU_NR_CRASH_SIGNALS];
static int timer_signal;
static pthread_once_t signals_once = PTHREAD_ONCE_INIT;

static void on_signal(int sig, siginfo_t *si, void *uctx)
{
    struct emu_sched *s = tls_sched;
    if (sig == timer_signal) {
        if (!s)
            return;
        s->deadline_hit = 1;
#if defined(__x86_64__)
        uintptr_t pc = (uintptr_t)((ucontext_t *)uctx)->uc_mcontext.gregs[REG_RIP];
        /* Jump out only from the kernel's own code (an endless loop there); inside the emulator or
         * libc (which may hold a lock) the next scheduling point stops the DPU instead. */
        if (s->in_tasklet && !s->faulted && pc >= s->code_lo && pc < s->code_hi) {
            s->crash_sig = 0;
            s->crash_pc = pc;
            siglongjmp(s->recover, 1);
        }
#endif
        return; /* sched_point and the scheduler see deadline_hit */
    }
    if (s && s->in_tasklet && !s->faulted && sig == SIGSEGV && si && !s->mirror_active &&
        in_image_mram(s->image, (uintptr_t)si->si_addr)) {
        mirror_activate(s); /* a direct access to a __mram variable: retry it on the mirror */
        return;
    }
    if (s && s->in_tasklet && !s->faulted) {
        s->crash_sig = sig;
        s->crash_addr = si ? si->si_addr : NULL;
#if defined(__x86_64__)
        s->crash_pc = (uintptr_t)((ucontext_t *)uctx)->uc_mcontext.gregs[REG_RIP];
#else
        (void)uctx;
#endif
        siglongjmp(s->recover, 1);
    }
    /* Not a kernel's: hand it to whoever handled it before (or the default action). A handler that
     * hands it back to us (each thinking the other came first) gets the default action. */
    static __thread int chaining;
    for (unsigned i = 0; i < EMU_NR_CRASH_SIGNALS; i++) {
        if (crash_signals[i] != sig)
            continue;
        struct sigaction *o = &old_actions[i];
        if (chaining) {
            signal(sig, SIG_DFL);
            raise(sig);
            return;
        }
        chaining = 1;
        if ((o->sa_flags & SA_SIGINFO) && o->sa_sigaction && o->sa_sigaction != on_signal) {
            o->sa_sigaction(sig, si, uctx);
            chaining = 0;
            return;
        }
        if (o->sa_handler == SIG_IGN) {
            chaining = 0;
            return;
        }
        if (!(o->sa_flags & SA_SIGINFO) && o->sa_handler != SIG_DFL && o->sa_handler) {
            o->sa_handler(sig);
            chaining = 0;
            return;
        }
        chaining = 0;
        signal(sig, SIG_DFL); /* returning re-executes the fault (or abort() re-raises): default action */
        if (sig == SIGTRAP || (si && si->si_code <= 0))
            raise(sig);
        return;
    }
}

static pthread_mutex_t signals_lock = PTHREAD_MUTEX_INITIALIZER;

static void signals_install_once(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (unsigned i = 0; i < EMU_NR_CRASH_SIGNALS; i++)
        sigaction(crash_signals[i], &sa, &old_actions[i]);
    timer_signal = SIGRTMIN + 5;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigaction(timer_signal, &sa, NULL);
}

/* Once per process, and again before each launch where someone (e.g. a later faulthandler.enable)
 * replaced a handler: the replacement becomes the one signals outside kernel code go to. */
EMU_HIDDEN void emu_signals_install(void)
{
    pthread_once(&signals_once, signals_install_once);
    pthread_mutex_lock(&signals_lock);
    for (unsigned i = 0; i < EMU_NR_CRASH_SIGNALS; i++) {
        struct sigaction cur;
        if (sigaction(crash_signals[i], NULL, &cur) != 0 || ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_signal))
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(crash_signals[i], &sa, &old_actions[i]);
    }
    pthread_mutex_unlock(&signals_lock);
}

EMU_HIDDEN void emu_source_line(const char *so_path, uintptr_t offset, char *out, size_t len)
{
    out[0] = '\0';
    if (!so_path || strchr(so_path, '\'') || !getenv("PATH"))
        return;
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "addr2line -f -C -e '%s' 0x%lx 2>/dev/null", so_path, (unsigned long)offset);
    FILE *f = popen(cmd, "r");
    if (!f)
        return;
    char fn[256] = "", loc[512] = "";
    if (fgets(fn, sizeof fn, f) && fgets(loc, sizeof loc, f)) {
        fn[strcspn(fn, "\n")] = '\0';
        loc[strcspn(loc, "\n")] = '\0';
        char *disc = strstr(loc, " (discriminator");
        if (disc)
            *disc = '\0';
        if (loc[0] && strncmp(loc, "??", 2) != 0) {
            const char *base = strrchr(loc, '/');
            snprintf(out, len, "%s (%s)", base ? base + 1 : loc, fn[0] && fn[0] != '?' ? fn : "?");
        }
    }
    pclose(f);
}

EMU_HIDDEN uint32_t emu_sched_run(struct emu_sched *s, struct updlrm_emu_set *set, uint32_t image_index,
                                  uint32_t first, uint32_t count)
{
    uint32_t faults = 0, w = s->prog->nr_images;
    /* The crash handler runs on an alternate stack (a stack overflow leaves none); keep the
     * thread's own if it has one. */
    stack_t old_ss, ss;
    int restore_ss = 0;
    if (sigaltstack(NULL, &old_ss) == 0 && (old_ss.ss_flags & SS_DISABLE) && s->altstack) {
        ss.ss_sp = s->altstack;
        ss.ss_size = EMU_ALTSTACK_BYTES;
        ss.ss_flags = 0;
        restore_ss = sigaltstack(&ss, NULL) == 0;
    }
    /* The deadline: a one-shot timer that signals this thread. */
    timer_t timer;
    int have_timer = 0;
    s->deadline_hit = 0;
    if (s->deadline_ns) {
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = timer_signal;
        sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
        if (timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0) {
            have_timer = 1;
            struct itimerspec its;
            memset(&its, 0, sizeof its);
            its.it_value.tv_sec = (time_t)(s->deadline_ns / 1000000000ull);
            its.it_value.tv_nsec = (long)(s->deadline_ns % 1000000000ull);
            if (s->deadline_ns <= emu_now_ns())
                s->deadline_hit = 1;
            else
                timer_settime(timer, TIMER_ABSTIME, &its, NULL);
        }
    }
    /* DPU d runs on image d % w; start at the first DPU of the range that maps to this image. */
    uint32_t start = first + ((image_index + w - (first % w)) % w);
    for (uint32_t d = start; d < first + count; d += w) {
        run_one_dpu(s, set, d);
        if (set->dpus[d].counters.faulted)
            faults++;
    }
    if (have_timer)
        timer_delete(timer);
    s->deadline_hit = 0;
    if (restore_ss) {
        old_ss.ss_flags = SS_DISABLE;
        sigaltstack(&old_ss, NULL);
    }
    return faults;
}
