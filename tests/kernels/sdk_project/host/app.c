/*
 * app.c - the host side of the SDK-style test project: uses every host API item the emulator
 * provides, checks each DPU result against its own arithmetic and prints "ALL CHECKS PASSED"
 * (exit 0) or the first failed check (exit 1). Build: make (with the drop-in commands on PATH).
 */
#include <dpu.h>
#include <dpu_log.h>
#include <dpu_probe.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef NR_DPUS
#define NR_DPUS 4
#endif
#ifndef NR_TASKLETS
#define NR_TASKLETS 8
#endif
#define N_WORDS 512

static int failures = 0;
#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "CHECK FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, "\n");                                               \
            failures++;                                                          \
        }                                                                        \
    } while (0)

static uint32_t input[NR_DPUS][N_WORDS];

static dpu_error_t count_rank(struct dpu_set_t rank, uint32_t rank_id, void *arg)
{
    uint32_t n = 0;
    DPU_ASSERT(dpu_get_nr_dpus(rank, &n));
    ((uint32_t *)arg)[rank_id] = n;
    return DPU_OK;
}

static bool sg_blocks(struct sg_block_info *out, uint32_t dpu_index, uint32_t block_index, void *args)
{
    /* two blocks per DPU: the second half of its row, then the first half (sums do not mind) */
    uint32_t(*rows)[N_WORDS] = (uint32_t(*)[N_WORDS])args;
    if (block_index > 1)
        return false;
    out->addr = (uint8_t *)&rows[dpu_index][block_index == 0 ? N_WORDS / 2 : 0];
    out->length = N_WORDS / 2 * sizeof(uint32_t);
    return true;
}

int main(void)
{
    /* enum values are the SDK's */
    CHECK(DPU_ERR_DPU_FAULT == 21 && DPU_ERR_UNKNOWN_SYMBOL == 27 && DPU_ERR_ASYNC_JOBS == (int)(1U << 31),
          "dpu_error_t numbering");
    char *msg = dpu_error_to_string(DPU_ERR_UNKNOWN_SYMBOL);
    CHECK(msg && strstr(msg, "unknown symbol"), "dpu_error_to_string: %s", msg ? msg : "(null)");
    free(msg);

    struct dpu_set_t set, dpu, rank;
    struct dpu_program_t *program = NULL;
    uint32_t nr_dpus = 0, nr_ranks = 0, i = 0;
    DPU_ASSERT(dpu_alloc(NR_DPUS, "nrDpusPerRank=2", &set));
    DPU_ASSERT(dpu_get_nr_dpus(set, &nr_dpus));
    DPU_ASSERT(dpu_get_nr_ranks(set, &nr_ranks));
    CHECK(nr_dpus == NR_DPUS && nr_ranks == (NR_DPUS + 1) / 2, "%u DPUs in %u ranks", nr_dpus, nr_ranks);
    DPU_ASSERT(dpu_load(set, "bin/dpu_app", &program));

    /* unknown symbols fail with the SDK's code; DPU_CHECK runs the handler */
    int handled = 0;
    DPU_CHECK(dpu_copy_to(set, "no_such_symbol", 0, &i, 4), handled = 1);
    CHECK(handled, "DPU_CHECK did not run its on_error statement");

    struct dpu_symbol_t scale_sym, out_sym;
    DPU_ASSERT(dpu_get_symbol(program, "scale", &scale_sym));
    DPU_ASSERT(dpu_get_symbol(program, "mram_out", &out_sym));
    CHECK(scale_sym.size == 4 && out_sym.address >= 0x08000000u && out_sym.size == 8 * NR_TASKLETS,
          "dpu_get_symbol: scale %u bytes, mram_out at 0x%x (%u bytes)", scale_sym.size, out_sym.address, out_sym.size);

    /* inputs: scatter/gather for the heap, broadcast then per-DPU copy for scale */
    for (uint32_t d = 0; d < NR_DPUS; d++)
        for (uint32_t w = 0; w < N_WORDS; w++)
            input[d][w] = d * 100000u + w * 3u + 1u;
    get_block_t blocks = {sg_blocks, input, sizeof(void *)};
    DPU_ASSERT(dpu_push_sg_xfer(set, DPU_XFER_TO_DPU, DPU_MRAM_HEAP_POINTER_NAME, 0, N_WORDS * 4, &blocks,
                                DPU_SG_XFER_DEFAULT));
    uint32_t one = 1;
    DPU_ASSERT(dpu_broadcast_to(set, "scale", 0, &one, 4, DPU_XFER_DEFAULT));
    DPU_FOREACH(set, dpu, i)
    {
        uint32_t scale = i + 2;
        DPU_ASSERT(dpu_copy_to_symbol(dpu, scale_sym, 0, &scale, 4));
    }
    /* asynchronous launch, dpu_status polling, dpu_sync */
    DPU_ASSERT(dpu_launch(set, DPU_ASYNCHRONOUS));
    bool done = false, fault = false;
    for (int spin = 0; spin < 100000000 && !done; spin++)
        DPU_ASSERT(dpu_status(set, &done, &fault));
    DPU_ASSERT(dpu_sync(set));
    CHECK(done && !fault, "dpu_status: done %d fault %d", done, fault);

    /* results, parallel pull */
    uint64_t sums[NR_DPUS], seq_sums[NR_DPUS];
    DPU_FOREACH(set, dpu, i) DPU_ASSERT(dpu_prepare_xfer(dpu, &sums[i]));
    DPU_ASSERT(dpu_push_xfer(set, DPU_XFER_FROM_DPU, "sum", 0, 8, DPU_XFER_DEFAULT));
    DPU_FOREACH(set, dpu, i) DPU_ASSERT(dpu_prepare_xfer(dpu, &seq_sums[i]));
    DPU_ASSERT(dpu_push_xfer(set, DPU_XFER_FROM_DPU, "seq_sum", 0, 8, DPU_XFER_DEFAULT));
    DPU_FOREACH(set, dpu, i)
    {
        uint64_t want = 0;
        for (uint32_t w = 0; w < N_WORDS; w++)
            want += input[i][w];
        want *= i + 2;
        CHECK(sums[i] == want, "DPU %u sum %" PRIu64 " want %" PRIu64, i, sums[i], want);
        CHECK(seq_sums[i] == want, "DPU %u seqread sum %" PRIu64 " want %" PRIu64, i, seq_sums[i], want);

        uint32_t pool_count[4], sem_count, chain[NR_TASKLETS];
        uint64_t mram_out[NR_TASKLETS], mram_dma_out[NR_TASKLETS], cycles;
        DPU_ASSERT(dpu_copy_from(dpu, "pool_count", 0, pool_count, sizeof pool_count));
        DPU_ASSERT(dpu_copy_from(dpu, "sem_count", 0, &sem_count, 4));
        DPU_ASSERT(dpu_copy_from(dpu, "chain", 0, chain, sizeof chain));
        DPU_ASSERT(dpu_copy_from_symbol(dpu, out_sym, 0, mram_out, sizeof mram_out));
        DPU_ASSERT(dpu_copy_from(dpu, "mram_dma_out", 0, mram_dma_out, sizeof mram_dma_out));
        DPU_ASSERT(dpu_copy_from(dpu, "cycles", 0, &cycles, 8));
        for (int k = 0; k < 4; k++)
            CHECK(pool_count[k] == NR_TASKLETS / 4, "DPU %u pool_count[%d] = %u", i, k, pool_count[k]);
        CHECK(sem_count == NR_TASKLETS, "DPU %u sem_count %u", i, sem_count);
        uint32_t v = 0;
        for (uint32_t t = 0; t < NR_TASKLETS; t++) {
            uint32_t c = v * 10 + t;
            CHECK(chain[t] == c, "DPU %u chain[%u] = %u want %u", i, t, chain[t], c);
            v = c % 1000;
            CHECK(mram_out[t] == 7 * 100 + 9 + t, "DPU %u mram_out[%u] = %" PRIu64, i, t, mram_out[t]);
            CHECK(mram_dma_out[t] == 1000 + t, "DPU %u mram_dma_out[%u] = %" PRIu64, i, t, mram_dma_out[t]);
        }
        CHECK(cycles > 0, "DPU %u perfcounter %" PRIu64, i, cycles);
    }

    /* ranks: DPU_RANK_FOREACH and dpu_callback per rank (synchronous and asynchronous) */
    uint32_t per_rank[8] = {0}, per_rank_async[8] = {0}, r = 0, nr_seen = 0;
    DPU_RANK_FOREACH(set, rank, r)
    {
        uint32_t n = 0;
        DPU_ASSERT(dpu_get_nr_dpus(rank, &n));
        nr_seen += n;
    }
    CHECK(nr_seen == NR_DPUS && r == nr_ranks, "DPU_RANK_FOREACH saw %u DPUs in %u ranks", nr_seen, r);
    DPU_ASSERT(dpu_callback(set, count_rank, per_rank, DPU_CALLBACK_DEFAULT));
    DPU_ASSERT(dpu_callback(set, count_rank, per_rank_async, DPU_CALLBACK_ASYNC));
    DPU_ASSERT(dpu_sync(set));
    CHECK(per_rank[0] == 2 && per_rank_async[0] == 2, "dpu_callback per rank: %u %u", per_rank[0], per_rank_async[0]);

    /* the raw MRAM API round trip on the last DPU, far into the heap */
    struct dpu_set_t last = dpu;
    uint8_t raw[64], back[64];
    for (int k = 0; k < 64; k++)
        raw[k] = (uint8_t)(k * 5 + 1);
    DPU_ASSERT(dpu_copy_to_mram(dpu_from_set(last), 32u << 20, raw, sizeof raw));
    DPU_ASSERT(dpu_copy_from_mram(dpu_from_set(last), back, 32u << 20, sizeof back));
    CHECK(memcmp(raw, back, 64) == 0, "dpu_copy_to_mram/dpu_copy_from_mram round trip");

    /* the log of DPU 0 and the (energy-less) probe */
    DPU_FOREACH(set, dpu, i)
    {
        if (i == 0) {
            DPU_ASSERT(dpu_log_read(dpu, stdout));
            DPU_ASSERT(dpulog_read_for_dpu(dpu.dpu, stdout));
        }
    }
    struct dpu_probe_t probe;
    DPU_ASSERT(dpu_probe_init("energy", &probe));
    DPU_ASSERT(dpu_probe_start(&probe));
    DPU_ASSERT(dpu_probe_stop(&probe));
    double energy = 1.0;
    CHECK(dpu_probe_get(&probe, DPU_ENERGY, DPU_AVERAGE, &energy) != DPU_OK, "the emulator measures no energy");
    DPU_ASSERT(dpu_probe_deinit(&probe));

    /* the *_symbol transfer forms, dpu_set_from_dpu, and single-call callbacks */
    uint32_t seven = 7, back7[NR_DPUS];
    DPU_ASSERT(dpu_broadcast_to_symbol(set, scale_sym, 0, &seven, 4, DPU_XFER_DEFAULT));
    DPU_FOREACH(set, dpu, i) DPU_ASSERT(dpu_prepare_xfer(dpu, &back7[i]));
    DPU_ASSERT(dpu_push_xfer_symbol(set, DPU_XFER_FROM_DPU, scale_sym, 0, 4, DPU_XFER_DEFAULT));
    DPU_FOREACH(set, dpu, i) CHECK(back7[i] == 7, "DPU %u scale after broadcast_to_symbol: %u", i, back7[i]);
    uint32_t whole[8] = {0};
    DPU_ASSERT(dpu_callback(set, count_rank, whole, DPU_CALLBACK_ASYNC | DPU_CALLBACK_NONBLOCKING | DPU_CALLBACK_SINGLE_CALL));
    DPU_ASSERT(dpu_sync(set));
    CHECK(whole[0] == NR_DPUS, "single-call callback saw %u DPUs", whole[0]);
    CHECK(dpu_callback(set, count_rank, whole, DPU_CALLBACK_NONBLOCKING) == DPU_ERR_NONBLOCKING_SYNC_CALLBACK,
          "a synchronous non-blocking callback is refused");
    {
        struct dpu_set_t d0 = dpu_set_from_dpu(dpu_from_set(last));
        uint32_t n = 0;
        DPU_ASSERT(dpu_get_nr_dpus(d0, &n));
        CHECK(n == 1, "dpu_set_from_dpu: %u DPUs", n);
    }
    DPU_ASSERT(dpu_free(set));

    /* dpu_alloc_ranks: whole ranks of nrDpusPerRank DPUs */
    struct dpu_set_t ranks;
    DPU_ASSERT(dpu_alloc_ranks(3, "nrDpusPerRank=5", &ranks));
    DPU_ASSERT(dpu_get_nr_dpus(ranks, &nr_dpus));
    DPU_ASSERT(dpu_get_nr_ranks(ranks, &nr_ranks));
    CHECK(nr_dpus == 15 && nr_ranks == 3, "dpu_alloc_ranks: %u DPUs in %u ranks", nr_dpus, nr_ranks);
    DPU_ASSERT(dpu_free(ranks));
    if (failures) {
        printf("%d CHECKS FAILED\n", failures);
        return 1;
    }
    printf("ALL CHECKS PASSED\n");
    return 0;
}
