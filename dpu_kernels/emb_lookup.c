/*
 * emb_lookup.c - the embedding-lookup DPU kernel: sum pooling of bags of table rows held in MRAM.
 *
 * Written only against the UPMEM DPU runtime API (defs.h, mram.h, alloc.h, barrier.h,
 * perfcounter.h) so that it compiles unchanged with dpu-upmem-dpurte-clang and, for the
 * emulator, with the host compiler against host/emu/include. Layouts: dpu_kernels/include/updlrm_abi.h.
 *
 * One launch:
 *   1. tasklet 0 resets the WRAM heap, allocates every tasklet's buffers, checks the launch args
 *      and clears the status;                                               barrier
 *   2. every tasklet checks a stripe of the shard descriptors;              barrier
 *   3. tasklet t takes the bags whose first_lookup lies in [t*L/T, (t+1)*L/T) (L lookups,
 *      T tasklets: shared by lookups, not by bags), found by binary search over the bag array in
 *      MRAM. Bag descriptors and local row ids are staged in WRAM in blocks. For each bag and each
 *      column block of its shard's row (COL_BLOCK / 4 columns: one DMA per row and block of
 *      COL_BLOCK bytes for fp32/int32, a quarter / half of that for int8 / int16), rows are read
 *      and summed in WRAM (fp32 for fp32 shards; int32 for int32, int16 and int8 shards, with
 *      plain integer adds of the sign-extended elements), and the block of the sum (4 bytes per
 *      column) is written to the bag's output slot;                          barrier
 *   4. tasklet 0 publishes the first error (lowest bag index) in updlrm_status.
 * Every MRAM address is checked against the args/shard descriptors before it is used: a bad request
 * yields an error code in updlrm_status, never an out-of-range DMA.
 */
#include <stdint.h>

#include <alloc.h>
#include <barrier.h>
#include <defs.h>
#include <mram.h>
#include <perfcounter.h>

#include "updlrm_abi.h"

#ifndef NR_TASKLETS
#error "emb_lookup.c: compile with -DNR_TASKLETS=N (1..24)"
#endif
#if NR_TASKLETS < 1 || NR_TASKLETS > 24
#error "emb_lookup.c: NR_TASKLETS must be 1..24"
#endif

/* ---- WRAM budget: 64 KiB minus the tasklet stacks minus a reserve for static data ---------- */
#ifdef STACK_SIZE_DEFAULT
#define UPDLRM_STACK_BYTES STACK_SIZE_DEFAULT
#else
#define UPDLRM_STACK_BYTES 1024
#endif
#define UPDLRM_WRAM_BYTES 65536
/* args (32 B) + status (312 B) + per-tasklet records and pointers (< 40 B each) + runtime. */
#define UPDLRM_WRAM_RESERVED 4096
#define UPDLRM_PER_TASKLET_BYTES \
    ((UPDLRM_WRAM_BYTES - UPDLRM_WRAM_RESERVED - NR_TASKLETS * UPDLRM_STACK_BYTES) / NR_TASKLETS)

/* Per tasklet: an accumulator and a row buffer of COL_BLOCK bytes each (a column block is
 * COL_BLOCK / 4 columns: its sums fill the accumulator, its stored elements at most the row buffer), ID_BLOCK local row ids,
 * BAG_BLOCK bag descriptors, one shard descriptor. Largest blocks that fit are chosen. */
#define BAG_BLOCK 8u
#define STAGE_FIXED_BYTES (BAG_BLOCK * 16u + 32u)
#if UPDLRM_PER_TASKLET_BYTES >= 2 * 2048 + 512 + STAGE_FIXED_BYTES
#define COL_BLOCK 2048u
#define ID_BLOCK 128u
#elif UPDLRM_PER_TASKLET_BYTES >= 2 * 1024 + 256 + STAGE_FIXED_BYTES
#define COL_BLOCK 1024u
#define ID_BLOCK 64u
#elif UPDLRM_PER_TASKLET_BYTES >= 2 * 512 + 256 + STAGE_FIXED_BYTES
#define COL_BLOCK 512u
#define ID_BLOCK 64u
#elif UPDLRM_PER_TASKLET_BYTES >= 2 * 256 + 128 + STAGE_FIXED_BYTES
#define COL_BLOCK 256u
#define ID_BLOCK 32u
#else
#error "emb_lookup.c: WRAM cannot hold the per-tasklet buffers at this NR_TASKLETS / STACK_SIZE_DEFAULT"
#endif
#define TASKLET_BUF_BYTES (2u * COL_BLOCK + ID_BLOCK * 4u + STAGE_FIXED_BYTES)
UPDLRM_STATIC_ASSERT(TASKLET_BUF_BYTES <= UPDLRM_PER_TASKLET_BYTES, "per-tasklet buffers exceed WRAM");
UPDLRM_STATIC_ASSERT(COL_BLOCK <= UPDLRM_MAX_DMA_BYTES && COL_BLOCK % 8 == 0, "bad COL_BLOCK");
UPDLRM_STATIC_ASSERT(ID_BLOCK % 2 == 0, "ID_BLOCK must keep 8-byte DMA sizes");

/* ---- host-visible symbols (names from the ABI header) --------------------------------------- */
__host struct updlrm_launch_args UPDLRM_ARGS;
__host struct updlrm_status UPDLRM_STATUS;
__mram_noinit struct updlrm_shard UPDLRM_SHARDS[UPDLRM_MAX_SHARDS];

/* ---- per-launch state (reset by tasklet 0 at every launch) ---------------------------------- */
BARRIER_INIT(updlrm_barrier, NR_TASKLETS);

struct tasklet_bufs {
    uint32_t *acc;              /* COL_BLOCK bytes: running sum of one column block */
    uint32_t *row;              /* COL_BLOCK bytes: the row block just read */
    uint32_t *ids;              /* ID_BLOCK local row ids */
    struct updlrm_bag *bags;    /* BAG_BLOCK bag descriptors */
    struct updlrm_shard *shard; /* the shard descriptor in use */
};
static struct tasklet_bufs bufs[NR_TASKLETS];

/* First error seen by each tasklet (code 0 = none). */
static uint32_t err_code[NR_TASKLETS];
static uint32_t err_bag[NR_TASKLETS];
static uint32_t err_value[NR_TASKLETS];
static uint32_t launch_ok; /* 1 when args and all shard descriptors passed the checks */
static uint32_t heap_base; /* MRAM address of DPU_MRAM_HEAP_POINTER */

static inline __mram_ptr void *mram_at(uint32_t addr)
{
    return (__mram_ptr void *)(uintptr_t)addr;
}

static inline void set_error(uint32_t t, uint32_t code, uint32_t bag, uint32_t value)
{
    if (err_code[t] == UPDLRM_OK) {
        err_code[t] = code;
        err_bag[t] = bag;
        err_value[t] = value;
    }
}

/* Checks the launch args (tasklet 0). Offsets are relative to the heap; all math in 64 bits. */
static uint32_t check_args(const struct updlrm_launch_args *a, uint32_t *value)
{
    /* MRAM is one 64 MiB bank at a 64 MiB-aligned address (0x08000000 on UPMEM and the emulator) */
    uint32_t mram_base = heap_base & ~(UPDLRM_MRAM_BYTES - 1u);
    uint64_t heap_room = (uint64_t)mram_base + UPDLRM_MRAM_BYTES - heap_base;
    uint64_t bags_end = (uint64_t)a->bags_offset + 16ull * a->nr_bags;
    uint64_t lookups_end = (uint64_t)a->lookups_offset + 4ull * (((uint64_t)a->nr_lookups + 1u) & ~1ull);
    uint64_t out_end = (uint64_t)a->out_offset + a->out_bytes;

    *value = a->abi_version;
    if (a->abi_version != UPDLRM_ABI_VERSION)
        return UPDLRM_ERR_ABI_VERSION;
    *value = a->nr_shards;
    if (a->nr_shards > UPDLRM_MAX_SHARDS)
        return UPDLRM_ERR_BAD_LAYOUT;
    *value = a->bags_offset | a->lookups_offset | a->out_offset | a->out_bytes;
    if ((*value & 7u) != 0 || (heap_base & 7u) != 0)
        return UPDLRM_ERR_BAD_LAYOUT;
    *value = a->out_offset;
    if (bags_end > a->lookups_offset || lookups_end > a->out_offset || out_end > heap_room)
        return UPDLRM_ERR_BAD_LAYOUT;
    return UPDLRM_OK;
}

/* Checks one shard descriptor: alignment, row width, and that its rows end below the request. */
static uint32_t check_shard(const struct updlrm_shard *s)
{
    if (UPDLRM_DTYPE_BYTES(s->dtype) == 0)
        return UPDLRM_ERR_BAD_DTYPE;
    if ((s->mram_offset & 7u) != 0 || s->nr_cols == 0 || s->nr_cols > (1u << 24)
        || s->row_bytes != UPDLRM_ROW_BYTES(s->nr_cols, s->dtype))
        return UPDLRM_ERR_BAD_SHARD_DESC;
    if ((uint64_t)s->mram_offset + (uint64_t)s->nr_rows * s->row_bytes > UPDLRM_ARGS.bags_offset)
        return UPDLRM_ERR_BAD_SHARD_DESC;
    return UPDLRM_OK;
}

/* Index of the first bag whose first_lookup >= target (nr_bags if none): binary search in MRAM. */
static uint32_t first_bag_at(uint32_t target, struct updlrm_bag *probe)
{
    uint32_t lo = 0, hi = UPDLRM_ARGS.nr_bags;
    uint32_t bags_addr = heap_base + UPDLRM_ARGS.bags_offset;
    while (lo < hi) {
        uint32_t mid = lo + ((hi - lo) >> 1);
        mram_read(mram_at(bags_addr + mid * 16u), probe, sizeof(*probe));
        if (probe->first_lookup < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Local row id number i of the request, staged in WRAM ID_BLOCK ids at a time. */
struct id_window {
    uint32_t lo, hi;
};
static inline uint32_t load_id(struct id_window *w, uint32_t *ids, uint32_t i)
{
    if (i < w->lo || i >= w->hi) {
        uint32_t start = i & ~1u; /* 8-byte aligned */
        uint32_t padded_total = (UPDLRM_ARGS.nr_lookups + 1u) & ~1u;
        uint32_t n = padded_total - start;
        if (n > ID_BLOCK)
            n = ID_BLOCK;
        mram_read(mram_at(heap_base + UPDLRM_ARGS.lookups_offset + start * 4u), ids, n * 4u);
        w->lo = start;
        w->hi = start + n;
    }
    return ids[i - w->lo];
}

static inline void add_fp32(uint32_t *acc, const uint32_t *row, uint32_t words)
{
    float *a = (float *)acc;
    const float *r = (const float *)row;
    for (uint32_t k = 0; k < words; k++)
        a[k] += r[k];
}

static inline void add_int32(uint32_t *acc, const uint32_t *row, uint32_t words)
{
    /* unsigned wrap-around add == two's complement int32 add; the host scale prevents overflow */
    for (uint32_t k = 0; k < words; k++)
        acc[k] += row[k];
}

/* int16 / int8: the first row sets the sums, later rows add to them (sign extension + add). */
static inline void set_int16(uint32_t *acc, const uint32_t *row, uint32_t n)
{
    int32_t *a = (int32_t *)acc;
    const int16_t *r = (const int16_t *)row;
    for (uint32_t k = 0; k < n; k++)
        a[k] = r[k];
}

static inline void add_int16(uint32_t *acc, const uint32_t *row, uint32_t n)
{
    int32_t *a = (int32_t *)acc;
    const int16_t *r = (const int16_t *)row;
    for (uint32_t k = 0; k < n; k++)
        a[k] += r[k];
}

static inline void set_int8(uint32_t *acc, const uint32_t *row, uint32_t n)
{
    int32_t *a = (int32_t *)acc;
    const int8_t *r = (const int8_t *)row;
    for (uint32_t k = 0; k < n; k++)
        a[k] = r[k];
}

static inline void add_int8(uint32_t *acc, const uint32_t *row, uint32_t n)
{
    int32_t *a = (int32_t *)acc;
    const int8_t *r = (const int8_t *)row;
    for (uint32_t k = 0; k < n; k++)
        a[k] += r[k];
}

/* Sums one bag into its output slot, column block by column block. Returns 0 or an error code
 * (then *bad holds the offending value).
 *
 * A block is `n` columns (n <= COL_BLOCK / 4): `n * 4` bytes of sums (a multiple of 8, as the
 * partial-sum row is padded to 8) and `rblock` stored bytes from byte `n0 * esize` of each row:
 * n * esize rounded up to 8, never past the row. Both are DMA sizes 8..2048, multiples of 8, at
 * 8-aligned MRAM offsets (row strides and block starts are multiples of 8). Padding columns are
 * zero in MRAM and sum to zero. */
static uint32_t do_bag(uint32_t t, const struct updlrm_bag *bag, struct id_window *win, uint32_t *bad)
{
    struct tasklet_bufs *b = &bufs[t];
    const struct updlrm_shard *s = b->shard;
    const uint32_t dtype = s->dtype;
    const uint32_t esize = UPDLRM_DTYPE_BYTES(dtype);
    const uint32_t out_row = UPDLRM_OUT_ROW_BYTES(s->nr_cols);
    uint32_t out_addr = heap_base + UPDLRM_ARGS.out_offset + bag->out_offset;

    for (uint32_t n0 = 0; n0 * UPDLRM_SUM_BYTES < out_row; n0 += COL_BLOCK / UPDLRM_SUM_BYTES) {
        uint32_t sum_bytes = out_row - n0 * UPDLRM_SUM_BYTES;
        if (sum_bytes > COL_BLOCK)
            sum_bytes = COL_BLOCK;
        uint32_t n = sum_bytes / UPDLRM_SUM_BYTES;
        uint32_t row_off = n0 * esize;
        uint32_t rblock = (n * esize + 7u) & ~7u;
        if (rblock > s->row_bytes - row_off)
            rblock = s->row_bytes - row_off;
        uint32_t base = heap_base + s->mram_offset + row_off;
        if (bag->nr_lookups == 0) {
            for (uint32_t k = 0; k < n; k++)
                b->acc[k] = 0;
        }
        for (uint32_t j = 0; j < bag->nr_lookups; j++) {
            uint32_t r = load_id(win, b->ids, bag->first_lookup + j);
            if (r >= s->nr_rows) {
                *bad = r;
                return UPDLRM_ERR_BAD_ROW;
            }
            uint32_t addr = base + r * s->row_bytes;
            if (esize == 4u) {
                /* fp32 / int32: the row block is the sum block's size; the first row is the sum */
                if (j == 0) {
                    mram_read(mram_at(addr), b->acc, rblock);
                    continue;
                }
                mram_read(mram_at(addr), b->row, rblock);
                if (dtype == UPDLRM_DTYPE_INT32)
                    add_int32(b->acc, b->row, n);
                else
                    add_fp32(b->acc, b->row, n);
                continue;
            }
            mram_read(mram_at(addr), b->row, rblock);
            if (esize == 2u) {
                if (j == 0)
                    set_int16(b->acc, b->row, n);
                else
                    add_int16(b->acc, b->row, n);
            } else {
                if (j == 0)
                    set_int8(b->acc, b->row, n);
                else
                    add_int8(b->acc, b->row, n);
            }
        }
        mram_write(b->acc, mram_at(out_addr + n0 * UPDLRM_SUM_BYTES), sum_bytes);
    }
    return UPDLRM_OK;
}

/* Processes bags [first, end) of tasklet t; returns the lookups done. Stops at the first error. */
static uint32_t run_bags(uint32_t t, uint32_t first, uint32_t end)
{
    struct tasklet_bufs *b = &bufs[t];
    struct id_window win = {1u, 0u}; /* empty */
    uint32_t cached_shard = 0xFFFFFFFFu;
    uint32_t done = 0;
    uint32_t bags_addr = heap_base + UPDLRM_ARGS.bags_offset;

    for (uint32_t j0 = first; j0 < end; j0 += BAG_BLOCK) {
        uint32_t n = end - j0;
        if (n > BAG_BLOCK)
            n = BAG_BLOCK;
        mram_read(mram_at(bags_addr + j0 * 16u), b->bags, n * 16u);
        for (uint32_t k = 0; k < n; k++) {
            const struct updlrm_bag *bag = &b->bags[k];
            uint32_t j = j0 + k, bad = 0, code;
            if (bag->shard >= UPDLRM_ARGS.nr_shards) {
                set_error(t, UPDLRM_ERR_BAD_SHARD, j, bag->shard);
                return done;
            }
            if (bag->shard != cached_shard) {
                mram_read(&UPDLRM_SHARDS[bag->shard], b->shard, sizeof(struct updlrm_shard));
                cached_shard = bag->shard;
            }
            if (bag->nr_lookups > UPDLRM_ARGS.nr_lookups || bag->first_lookup > UPDLRM_ARGS.nr_lookups - bag->nr_lookups
                || (bag->out_offset & 7u) != 0 || bag->out_offset > UPDLRM_ARGS.out_bytes
                || UPDLRM_OUT_ROW_BYTES(b->shard->nr_cols) > UPDLRM_ARGS.out_bytes - bag->out_offset) {
                set_error(t, UPDLRM_ERR_BAD_BAG, j, bag->first_lookup);
                return done;
            }
            code = do_bag(t, bag, &win, &bad);
            if (code != UPDLRM_OK) {
                set_error(t, code, j, bad);
                return done;
            }
            done += bag->nr_lookups;
        }
    }
    return done;
}

int main(void)
{
    uint32_t t = me();

    /* 1. reset and check (tasklet 0) */
    if (t == 0) {
        uint32_t value = 0, code;
        mem_reset();
        perfcounter_config(COUNT_CYCLES, true);
        heap_base = (uint32_t)(uintptr_t)DPU_MRAM_HEAP_POINTER;
        for (uint32_t k = 0; k < NR_TASKLETS; k++) {
            bufs[k].acc = (uint32_t *)mem_alloc(COL_BLOCK);
            bufs[k].row = (uint32_t *)mem_alloc(COL_BLOCK);
            bufs[k].ids = (uint32_t *)mem_alloc(ID_BLOCK * 4u);
            bufs[k].bags = (struct updlrm_bag *)mem_alloc(BAG_BLOCK * 16u);
            bufs[k].shard = (struct updlrm_shard *)mem_alloc(sizeof(struct updlrm_shard));
            err_code[k] = UPDLRM_OK;
            err_bag[k] = UPDLRM_NO_BAG;
            err_value[k] = 0;
        }
        UPDLRM_STATUS.abi_version = UPDLRM_ABI_VERSION;
        UPDLRM_STATUS.code = UPDLRM_OK;
        UPDLRM_STATUS.bad_bag = UPDLRM_NO_BAG;
        UPDLRM_STATUS.bad_value = 0;
        UPDLRM_STATUS.bad_tasklet = 0;
        UPDLRM_STATUS.nr_tasklets = NR_TASKLETS;
        for (uint32_t k = 0; k < UPDLRM_MAX_TASKLETS; k++) {
            UPDLRM_STATUS.cycles[k] = 0;
            UPDLRM_STATUS.lookups[k] = 0;
        }
        code = check_args(&UPDLRM_ARGS, &value);
        if (code != UPDLRM_OK)
            set_error(0, code, UPDLRM_NO_BAG, value);
        launch_ok = (code == UPDLRM_OK);
    }
    barrier_wait(&updlrm_barrier);

    /* 2. shard descriptors, striped over tasklets */
    if (launch_ok) {
        for (uint32_t i = t; i < UPDLRM_ARGS.nr_shards; i += NR_TASKLETS) {
            uint32_t code;
            mram_read(&UPDLRM_SHARDS[i], bufs[t].shard, sizeof(struct updlrm_shard));
            code = check_shard(bufs[t].shard);
            if (code != UPDLRM_OK) {
                set_error(t, code, UPDLRM_NO_BAG, i);
                break;
            }
        }
    }
    barrier_wait(&updlrm_barrier);
    if (t == 0) {
        for (uint32_t k = 0; k < NR_TASKLETS; k++)
            if (err_code[k] != UPDLRM_OK)
                launch_ok = 0;
    }
    barrier_wait(&updlrm_barrier);

    /* 3. the bags whose first lookup falls in this tasklet's share of the lookups */
    if (launch_ok) {
        perfcounter_t start = perfcounter_get();
        uint32_t total = UPDLRM_ARGS.nr_lookups;
        /* total < 2^24 (the request fits in 64 MiB), so total * 24 fits in 32 bits */
        uint32_t lo = (total * t) / NR_TASKLETS;
        uint32_t hi = (total * (t + 1u)) / NR_TASKLETS;
        uint32_t first = first_bag_at(lo, bufs[t].bags);
        uint32_t end = (t + 1u == NR_TASKLETS) ? UPDLRM_ARGS.nr_bags : first_bag_at(hi, bufs[t].bags);
        uint32_t done = run_bags(t, first, end);
        UPDLRM_STATUS.lookups[t] = done;
        UPDLRM_STATUS.cycles[t] = (uint64_t)(perfcounter_get() - start);
    }
    barrier_wait(&updlrm_barrier);

    /* 4. publish the first error: args/shard errors first, then the lowest bag index */
    if (t == 0) {
        uint32_t best = NR_TASKLETS;
        for (uint32_t k = 0; k < NR_TASKLETS; k++) {
            if (err_code[k] == UPDLRM_OK)
                continue;
            if (best == NR_TASKLETS) {
                best = k;
                continue;
            }
            /* UPDLRM_NO_BAG (0xFFFFFFFF) errors come first; otherwise the lower bag index wins */
            uint32_t rank_k = err_bag[k] + 1u, rank_best = err_bag[best] + 1u; /* NO_BAG -> 0 */
            if (rank_k < rank_best)
                best = k;
        }
        if (best != NR_TASKLETS) {
            UPDLRM_STATUS.code = err_code[best];
            UPDLRM_STATUS.bad_bag = err_bag[best];
            UPDLRM_STATUS.bad_value = err_value[best];
            UPDLRM_STATUS.bad_tasklet = best;
        }
    }
    return 0;
}
