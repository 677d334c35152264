/* switch_bench.c - times launches of a kernel on many DPUs (used to compare the x86-64 assembly
 * context switch with ucontext: build once normally and once with -DUPDLRM_EMU_FORCE_UCONTEXT).
 * usage: switch_bench KERNEL.emu.so NR_DPUS REPEATS WORKERS; prints the median launch time. */
#include <dpu.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    uint32_t n = (uint32_t)atoi(argv[2]);
    int reps = atoi(argv[3]);
    dpu_emu_set_workers((unsigned)atoi(argv[4]));
    struct dpu_set_t set;
    if (dpu_alloc(n, NULL, &set) != DPU_OK || dpu_load(set, argv[1], NULL) != DPU_OK) {
        fprintf(stderr, "setup failed: %s\n", dpu_emu_last_error());
        return 1;
    }
    double *t = calloc((size_t)reps, sizeof *t);
    for (int r = 0; r < reps; r++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (dpu_launch(set, DPU_SYNCHRONOUS) != DPU_OK)
            return 1;
        clock_gettime(CLOCK_MONOTONIC, &b);
        t[r] = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    }
    qsort(t, (size_t)reps, sizeof *t, cmp);
    printf("%u DPUs: median launch %.4f s over %d repeats\n", n, t[reps / 2], reps);
    dpu_free(set);
    free(t);
    return 0;
}
