/*
 * driver.h - the updlrm host driver: allocate DPUs, load the embedding-lookup kernel, write table
 * shards, run one launch (args, request, launch, status, partial sums), free. Written only against
 * the libdpu API (<dpu.h>); built twice: against host/emu (the emulator, always) and, where the
 * UPMEM SDK is found, against the real libdpu.
 *
 * Every function returns an updlrm_drv_code and writes a one-line message into the caller's
 * buffer on error; nothing here exits or aborts. Byte offsets are relative to the DPU's MRAM heap
 * (DPU_MRAM_HEAP_POINTER) and multiples of 8; transfers to/from all DPUs move the same length
 * (libdpu's push_xfer rule), so per-DPU buffers are padded by the caller to a common stride.
 * Times are wall-clock seconds from CLOCK_MONOTONIC.
 */
#ifndef UPDLRM_DRIVER_H
#define UPDLRM_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#include "updlrm_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

enum updlrm_drv_code {
    UPDLRM_DRV_OK = 0,
    UPDLRM_DRV_ERR_ARG = 1,    /* a bad argument (the message names it) */
    UPDLRM_DRV_ERR_NOMEM = 2,  /* host memory allocation failed */
    UPDLRM_DRV_ERR_DPU = 3,    /* libdpu returned an error (alloc, load, transfer) */
    UPDLRM_DRV_ERR_FAULT = 4,  /* a DPU faulted during the launch (see struct updlrm_fault) */
    UPDLRM_DRV_ERR_KERNEL = 5, /* the kernel reported an error in updlrm_status on some DPU */
};

/* Where a launch failed. dpu/tasklet are -1 when unknown. */
struct updlrm_fault {
    int32_t dpu;
    int32_t tasklet;
    uint32_t kernel_code; /* UPDLRM_ERR_* for UPDLRM_DRV_ERR_KERNEL, else 0 */
    uint32_t bad_bag;
    uint32_t bad_value;
    char reason[256];
};

/* Phase times (seconds) and bytes of one launch. */
struct updlrm_launch_times {
    double cpu_to_dpu_s; /* launch args + request push */
    double kernel_s;     /* dpu_launch until dpu_sync returned */
    double status_s;     /* updlrm_status gather */
    double dpu_to_cpu_s; /* partial-sum gather */
    uint64_t request_push_bytes; /* per DPU, padded to the largest request */
    uint64_t output_pull_bytes;  /* per DPU, padded to the largest output */
};

struct updlrm_driver;

/* Allocates nr_dpus DPUs with `profile` ("" for the default) and loads `kernel_path`. */
int updlrm_driver_open(const char *kernel_path, uint32_t nr_dpus, const char *profile, struct updlrm_driver **out,
                       double *seconds, char *msg, size_t msg_len);

uint32_t updlrm_driver_nr_dpus(const struct updlrm_driver *drv);

/* Writes table shards and their descriptors. data[d] holds data_bytes[d] bytes (a multiple of 8)
 * for MRAM heap + 0 of DPU d; pushes are padded to the largest and cut into windows so that host
 * memory stays bounded. descs is [nr_dpus][descs_stride] descriptors (rows padded with zeros). */
int updlrm_driver_write_shards(struct updlrm_driver *drv, const void *const *data, const uint64_t *data_bytes,
                               const struct updlrm_shard *descs, uint32_t descs_stride, double *seconds, char *msg,
                               size_t msg_len);

/* Source of shard data for updlrm_driver_write_shards_with: writes bytes [offset, offset + length)
 * of the MRAM image of DPU dpus[k] into dst + k * length for k < nr (zeros past that DPU's data).
 * Returns 0, or non-zero with a one-line message in msg (the write then fails with
 * UPDLRM_DRV_ERR_ARG). */
typedef int (*updlrm_shard_fill_fn)(void *ctx, uint64_t offset, uint64_t length, uint32_t nr, const uint32_t *dpus,
                                    uint8_t *dst, char *msg, size_t msg_len);

/* As updlrm_driver_write_shards, with the data made window by window by `fill` (called once per
 * window, in increasing offsets, for the DPUs whose data reach into the window), so that no full
 * copy of the images need exist in host memory. Only those DPUs take part in the window's push
 * (the others get no buffer: libdpu leaves a DPU without a prepared buffer out of a push). */
int updlrm_driver_write_shards_with(struct updlrm_driver *drv, const uint64_t *data_bytes, updlrm_shard_fill_fn fill,
                                    void *ctx, const struct updlrm_shard *descs, uint32_t descs_stride,
                                    double *seconds, char *msg, size_t msg_len);

/* A launch in four steps, so that the host can pack and merge other batches while the DPUs run
 * (at most one launch runs at a time per driver; the times accumulate into *times):
 *   push        args[d] -> UPDLRM_SYM_ARGS of DPU d, and request_bytes (the largest request, a
 *               multiple of 8) of request + d * request_stride -> heap + request_offset;
 *   launch_async dpu_launch(DPU_ASYNCHRONOUS): returns while the DPUs run;
 *   wait        dpu_sync, then every DPU's updlrm_status: a DPU fault gives UPDLRM_DRV_ERR_FAULT,
 *               a kernel error status UPDLRM_DRV_ERR_KERNEL, both with *fault filled in;
 *   pull        output_bytes (multiple of 8) from heap + output_offset -> output + d * output_stride.
 * The DPUs stay usable after any error. */
int updlrm_driver_push(struct updlrm_driver *drv, const struct updlrm_launch_args *args, const uint8_t *request,
                       size_t request_stride, uint32_t request_offset, size_t request_bytes,
                       struct updlrm_launch_times *times, char *msg, size_t msg_len);
int updlrm_driver_launch_async(struct updlrm_driver *drv, struct updlrm_fault *fault, char *msg, size_t msg_len);
int updlrm_driver_wait(struct updlrm_driver *drv, struct updlrm_status *status, struct updlrm_launch_times *times,
                       struct updlrm_fault *fault, char *msg, size_t msg_len);
int updlrm_driver_pull(struct updlrm_driver *drv, uint8_t *output, size_t output_stride, uint32_t output_offset,
                       size_t output_bytes, struct updlrm_launch_times *times, char *msg, size_t msg_len);

/* Frees the DPUs. Safe on NULL. */
void updlrm_driver_close(struct updlrm_driver *drv);

#ifdef UPDLRM_EMULATOR
struct dpu_emu_counters;
/* The emulator's per-DPU counters of the last launch (out: one per DPU). */
int updlrm_driver_emu_counters(struct updlrm_driver *drv, struct dpu_emu_counters *out, char *msg, size_t msg_len);
/* Resets the emulator's host<->DPU byte counters. */
int updlrm_driver_emu_reset_transfer_counters(struct updlrm_driver *drv, char *msg, size_t msg_len);
#endif

#ifdef __cplusplus
}
#endif

#endif /* UPDLRM_DRIVER_H */
