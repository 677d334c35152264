/* smoke.c - C-level smoke test of the emulator: allocates DPUs, loads a kernel given on the
 * command line (a mutex counter + per-DPU WRAM global + MRAM DMA), pushes per-DPU buffers,
 * launches twice and checks results. Exit status 0 = pass. */
#include <dpu.h>
#include <stdio.h>
#include <string.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        dpu_error_t e_ = (x);                                                                      \
        if (e_ != DPU_OK) {                                                                        \
            fprintf(stderr, "%s:%d %s -> %s (%s)\n", __FILE__, __LINE__, #x, dpu_error_to_string(e_), \
                    dpu_emu_last_error());                                                         \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

const char *dpu_emu_last_error(void);

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    struct dpu_set_t set, dpu;
    uint32_t n = argc > 2 ? (uint32_t)atoi(argv[2]) : 8, i;
    CHECK(dpu_alloc(n, "backend=emulator", &set));
    CHECK(dpu_load(set, argv[1], NULL));
    uint64_t(*in)[4] = calloc(n, sizeof *in);
    if (!in)
        return 1;
    DPU_FOREACH(set, dpu, i)
    {
        for (int k = 0; k < 4; k++)
            in[i][k] = i * 100 + (uint64_t)k;
    }
    for (int launch = 0; launch < 2; launch++) {
        DPU_FOREACH(set, dpu, i) { CHECK(dpu_prepare_xfer(dpu, in[i])); }
        CHECK(dpu_push_xfer(set, DPU_XFER_TO_DPU, DPU_MRAM_HEAP_POINTER_NAME, 0, sizeof in[0], DPU_XFER_DEFAULT));
        CHECK(dpu_launch(set, DPU_SYNCHRONOUS));
    }
    DPU_FOREACH(set, dpu, i)
    {
        uint32_t counter = 0, launches = 0;
        uint64_t sum = 0;
        CHECK(dpu_copy_from(dpu, "counter", 0, &counter, 4));
        CHECK(dpu_copy_from(dpu, "launches", 0, &launches, 4));
        CHECK(dpu_copy_from(dpu, DPU_MRAM_HEAP_POINTER_NAME, 32, &sum, 8));
        uint64_t want = 4 * i * 100 + 6;
        if (counter != 16 || launches != 2 || sum != want) {
            fprintf(stderr, "DPU %u: counter %u launches %u sum %llu (want 16, 2, %llu)\n", i, counter, launches,
                    (unsigned long long)sum, (unsigned long long)want);
            return 1;
        }
    }
    DPU_FOREACH(set, dpu, i)
    {
        if (i == 0)
            CHECK(dpu_log_read(dpu, stdout));
    }
    CHECK(dpu_free(set));
    free(in);
    printf("smoke OK\n");
    return 0;
}
