/*
 * driver.c - the updlrm host driver (see driver.h): DPU allocation, kernel load, shard writes and
 * one launch of the embedding-lookup kernel, using only the libdpu API. The same file builds
 * against the emulator's dpu.h (UPDLRM_EMULATOR defined) and the UPMEM SDK's dpu.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "driver.h"

#include <dpu.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct updlrm_driver {
    struct dpu_set_t set;
    uint32_t nr_dpus;
    int running;      /* an asynchronous launch has not been waited for */
    double launch_t0; /* when it started */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail(int code, char *msg, size_t msg_len, const char *fmt, ...)
{
    if (msg != NULL && msg_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msg_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* libdpu error -> message "<what>: <libdpu's string>". */
static int fail_dpu(dpu_error_t err, char *msg, size_t msg_len, const char *what)
{
    const char *s = dpu_error_to_string(err);
    int code = fail(UPDLRM_DRV_ERR_DPU, msg, msg_len, "%s failed: %s (dpu_error_t %d)", what,
                    s != NULL ? s : "unknown error", (int)err);
    free((void *)s); /* libdpu (and the emulator) return a string the caller owns */
    return code;
}

int updlrm_driver_open(const char *kernel_path, uint32_t nr_dpus, const char *profile, struct updlrm_driver **out,
                       double *seconds, char *msg, size_t msg_len)
{
    double t0 = now_s();
    struct updlrm_driver *drv;
    dpu_error_t err;
    uint32_t got = 0;

    if (out == NULL || kernel_path == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_open: NULL kernel_path or out");
    *out = NULL;
    if (nr_dpus == 0)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_open: nr_dpus must be >= 1");
    drv = (struct updlrm_driver *)calloc(1, sizeof(*drv));
    if (drv == NULL)
        return fail(UPDLRM_DRV_ERR_NOMEM, msg, msg_len, "updlrm_driver_open: out of host memory");
    err = dpu_alloc(nr_dpus, profile != NULL ? profile : "", &drv->set);
    if (err != DPU_OK) {
        free(drv);
        return fail_dpu(err, msg, msg_len, "dpu_alloc");
    }
    err = dpu_get_nr_dpus(drv->set, &got);
    if (err != DPU_OK || got != nr_dpus) {
        dpu_free(drv->set);
        free(drv);
        if (err != DPU_OK)
            return fail_dpu(err, msg, msg_len, "dpu_get_nr_dpus");
        return fail(UPDLRM_DRV_ERR_DPU, msg, msg_len, "dpu_alloc gave %u DPUs, %u were asked for", got, nr_dpus);
    }
    drv->nr_dpus = got;
    err = dpu_load(drv->set, kernel_path, NULL);
    if (err != DPU_OK) {
        int code;
        char what[512];
        snprintf(what, sizeof(what), "dpu_load(%s)", kernel_path);
        code = fail_dpu(err, msg, msg_len, what);
        dpu_free(drv->set);
        free(drv);
        return code;
    }
    *out = drv;
    if (seconds != NULL)
        *seconds = now_s() - t0;
    return UPDLRM_DRV_OK;
}

uint32_t updlrm_driver_nr_dpus(const struct updlrm_driver *drv)
{
    return drv != NULL ? drv->nr_dpus : 0;
}

/* Per-DPU window of one shard push: the staging buffer stays within about 64 MiB over all DPUs
 * (64 KiB x nr_dpus beyond 1,024 DPUs: 160 MiB at 2,560). */
static uint64_t shard_chunk_bytes(uint32_t nr_dpus)
{
    uint64_t chunk = (64ull << 20) / nr_dpus;
    if (chunk > (8ull << 20))
        chunk = 8ull << 20;
    if (chunk < (64ull << 10))
        chunk = 64ull << 10;
    return chunk & ~7ull;
}

/* updlrm_driver_write_shards' source: per-DPU buffers, copied window by window. */
struct buffer_source {
    const void *const *data;
    const uint64_t *data_bytes;
    uint32_t nr_dpus;
};

static int fill_from_buffers(void *ctx, uint64_t offset, uint64_t length, uint32_t nr, const uint32_t *dpus,
                             uint8_t *dst, char *msg, size_t msg_len)
{
    const struct buffer_source *src = (const struct buffer_source *)ctx;
    (void)msg;
    (void)msg_len;
    for (uint32_t k = 0; k < nr; k++) {
        uint32_t i = dpus[k];
        uint64_t have = src->data_bytes[i] > offset ? src->data_bytes[i] - offset : 0;
        uint8_t *d = dst + (size_t)k * length;
        if (have > length)
            have = length;
        if (have > 0)
            memcpy(d, (const uint8_t *)src->data[i] + offset, have);
        memset(d + have, 0, length - have);
    }
    return 0;
}

int updlrm_driver_write_shards(struct updlrm_driver *drv, const void *const *data, const uint64_t *data_bytes,
                               const struct updlrm_shard *descs, uint32_t descs_stride, double *seconds, char *msg,
                               size_t msg_len)
{
    struct buffer_source src;
    uint32_t i;

    if (drv == NULL || data == NULL || data_bytes == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_write_shards: NULL argument");
    for (i = 0; i < drv->nr_dpus; i++)
        if (data_bytes[i] > 0 && data[i] == NULL)
            return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_write_shards: DPU %u has %llu bytes but no data",
                        i, (unsigned long long)data_bytes[i]);
    src.data = data;
    src.data_bytes = data_bytes;
    src.nr_dpus = drv->nr_dpus;
    return updlrm_driver_write_shards_with(drv, data_bytes, fill_from_buffers, &src, descs, descs_stride, seconds, msg,
                                           msg_len);
}

int updlrm_driver_write_shards_with(struct updlrm_driver *drv, const uint64_t *data_bytes, updlrm_shard_fill_fn fill,
                                    void *ctx, const struct updlrm_shard *descs, uint32_t descs_stride,
                                    double *seconds, char *msg, size_t msg_len)
{
    double t0 = now_s();
    struct dpu_set_t dpu;
    uint32_t i;
    uint64_t max_bytes = 0, staging_bytes;
    uint8_t *staging = NULL;
    uint32_t *active = NULL, *slot = NULL;
    dpu_error_t err;
    int code = UPDLRM_DRV_OK;

    if (drv == NULL || data_bytes == NULL || fill == NULL || descs == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_write_shards: NULL argument");
    if (descs_stride == 0 || descs_stride > UPDLRM_MAX_SHARDS)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_write_shards: %u shard descriptors per DPU, allowed 1..%u",
                    descs_stride, UPDLRM_MAX_SHARDS);
    for (i = 0; i < drv->nr_dpus; i++) {
        if (data_bytes[i] % 8 != 0)
            return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len,
                        "updlrm_driver_write_shards: DPU %u has %llu shard bytes (must be a multiple of 8)", i,
                        (unsigned long long)data_bytes[i]);
        if (data_bytes[i] > max_bytes)
            max_bytes = data_bytes[i];
    }
    if (max_bytes > UPDLRM_MRAM_BYTES)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_write_shards: %llu shard bytes exceed the 64 MiB MRAM",
                    (unsigned long long)max_bytes);

    /* Shard data, one MRAM window [off, off + len) at a time: `fill` writes the windows of the DPUs
     * whose data reach into it (the active ones) side by side into one staging buffer of
     * nr_dpus x shard_chunk_bytes (64 MiB or 64 KiB per DPU), and one push moves them. As DPUs run
     * out of data the window widens (up to 8 MiB) over the same buffer, so a plan with a few full
     * DPUs (table_wise) takes a few wide pushes, not a thousand narrow ones. */
    staging_bytes = (uint64_t)drv->nr_dpus * shard_chunk_bytes(drv->nr_dpus);
    if (max_bytes > 0) {
        staging = (uint8_t *)malloc((size_t)staging_bytes);
        active = (uint32_t *)malloc((size_t)drv->nr_dpus * sizeof(*active));
        slot = (uint32_t *)malloc((size_t)drv->nr_dpus * sizeof(*slot));
        if (staging == NULL || active == NULL || slot == NULL) {
            code = fail(UPDLRM_DRV_ERR_NOMEM, msg, msg_len, "updlrm_driver_write_shards: out of host memory for %llu B of staging",
                        (unsigned long long)staging_bytes);
            goto done;
        }
    }
    for (uint64_t off = 0, len = 0; off < max_bytes; off += len) {
        uint32_t nr_active = 0;
        for (i = 0; i < drv->nr_dpus; i++) {
            slot[i] = UINT32_MAX;
            if (data_bytes[i] > off) {
                slot[i] = nr_active;
                active[nr_active++] = i;
            }
        }
        len = (staging_bytes / nr_active) & ~7ull;
        if (len > (8ull << 20))
            len = 8ull << 20;
        if (len > max_bytes - off)
            len = max_bytes - off;
        if (fill(ctx, off, len, nr_active, active, staging, msg, msg_len) != 0) {
            code = UPDLRM_DRV_ERR_ARG;
            goto done;
        }
        DPU_FOREACH(drv->set, dpu, i)
        {
            if (slot[i] == UINT32_MAX)
                continue;
            err = dpu_prepare_xfer(dpu, staging + (size_t)slot[i] * len);
            if (err != DPU_OK) {
                code = fail_dpu(err, msg, msg_len, "dpu_prepare_xfer (shards)");
                goto done;
            }
        }
        err = dpu_push_xfer(drv->set, DPU_XFER_TO_DPU, DPU_MRAM_HEAP_POINTER_NAME, (uint32_t)off, (size_t)len,
                            DPU_XFER_DEFAULT);
        if (err != DPU_OK) {
            code = fail_dpu(err, msg, msg_len, "dpu_push_xfer (shards)");
            goto done;
        }
    }

    /* Descriptors: one push of descs_stride entries per DPU. */
    DPU_FOREACH(drv->set, dpu, i)
    {
        err = dpu_prepare_xfer(dpu, (void *)(descs + (size_t)i * descs_stride));
        if (err != DPU_OK) {
            code = fail_dpu(err, msg, msg_len, "dpu_prepare_xfer (shard descriptors)");
            goto done;
        }
    }
    err = dpu_push_xfer(drv->set, DPU_XFER_TO_DPU, UPDLRM_SYM_SHARDS, 0,
                        (size_t)descs_stride * sizeof(struct updlrm_shard), DPU_XFER_DEFAULT);
    if (err != DPU_OK)
        code = fail_dpu(err, msg, msg_len, "dpu_push_xfer (" UPDLRM_SYM_SHARDS ")");

done:
    free(staging);
    free(active);
    free(slot);
    if (seconds != NULL)
        *seconds = now_s() - t0;
    return code;
}

/* Which DPU faulted, and why. */
static void describe_fault(struct updlrm_driver *drv, dpu_error_t err, struct updlrm_fault *fault)
{
    const char *s = dpu_error_to_string(err);
    fault->dpu = -1;
    fault->tasklet = -1;
    snprintf(fault->reason, sizeof(fault->reason), "%s", s != NULL ? s : "DPU fault");
    free((void *)s);
#ifdef UPDLRM_EMULATOR
    {
        uint32_t dpu_id = 0, tasklet = 0;
        if (dpu_emu_last_fault(drv->set, &dpu_id, &tasklet, fault->reason, sizeof(fault->reason)) == DPU_OK) {
            fault->dpu = (int32_t)dpu_id;
            fault->tasklet = (int32_t)tasklet;
        }
    }
#else
    {
        struct dpu_set_t dpu;
        uint32_t i;
        DPU_FOREACH(drv->set, dpu, i)
        {
            bool done = false, faulted = false;
            if (dpu_status(dpu, &done, &faulted) == DPU_OK && faulted) {
                fault->dpu = (int32_t)i;
                break;
            }
        }
    }
#endif
}

static const char *kernel_code_name(uint32_t code)
{
    switch (code) {
    case UPDLRM_ERR_ABI_VERSION: return "ABI version mismatch";
    case UPDLRM_ERR_BAD_SHARD: return "bag names a shard id >= nr_shards";
    case UPDLRM_ERR_BAD_ROW: return "local row id >= the shard's nr_rows";
    case UPDLRM_ERR_BAD_LAYOUT: return "launch args regions overlap, are unaligned or exceed MRAM";
    case UPDLRM_ERR_BAD_DTYPE: return "shard dtype is not one of UPDLRM_DTYPE_*";
    case UPDLRM_ERR_BAD_SHARD_DESC: return "inconsistent shard descriptor";
    case UPDLRM_ERR_BAD_BAG: return "bag lookups or output slot out of range";
    default: return "unknown kernel error";
    }
}

/* One push of `len` bytes per DPU at `symbol` + offset, DPU i's bytes at base + i * stride (the
 * libdpu prepare-per-DPU-then-push pattern; every push of the driver goes through here). */
static int xfer_all(struct updlrm_driver *drv, dpu_xfer_t dir, const char *symbol, uint32_t offset, const void *base,
                    size_t stride, size_t len, const char *what, char *msg, size_t msg_len)
{
    struct dpu_set_t dpu;
    uint32_t i;
    dpu_error_t err;
    char where[160];
    DPU_FOREACH(drv->set, dpu, i)
    {
        err = dpu_prepare_xfer(dpu, (void *)((const uint8_t *)base + (size_t)i * stride));
        if (err != DPU_OK) {
            snprintf(where, sizeof(where), "dpu_prepare_xfer (%s)", what);
            return fail_dpu(err, msg, msg_len, where);
        }
    }
    err = dpu_push_xfer(drv->set, dir, symbol, offset, len, DPU_XFER_DEFAULT);
    if (err != DPU_OK) {
        snprintf(where, sizeof(where), "dpu_push_xfer (%s)", what);
        return fail_dpu(err, msg, msg_len, where);
    }
    return UPDLRM_DRV_OK;
}

int updlrm_driver_push(struct updlrm_driver *drv, const struct updlrm_launch_args *args, const uint8_t *request,
                       size_t request_stride, uint32_t request_offset, size_t request_bytes,
                       struct updlrm_launch_times *times, char *msg, size_t msg_len)
{
    int code;
    double t0;
    if (drv == NULL || args == NULL || times == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_push: NULL argument");
    if (drv->running)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_push: a launch is still running (call updlrm_driver_wait)");
    if (request_bytes % 8 != 0 || request_offset % 8 != 0)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len,
                    "updlrm_driver_push: request %zu B at %u: both must be multiples of 8", request_bytes, request_offset);
    if (request_bytes > 0 && (request == NULL || request_stride < request_bytes))
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_push: request stride smaller than the transfer");
    t0 = now_s();
    /* CPU -> DPU: launch args (WRAM) and the request (MRAM), one push per symbol. */
    code = xfer_all(drv, DPU_XFER_TO_DPU, UPDLRM_SYM_ARGS, 0, args, sizeof(struct updlrm_launch_args),
                    sizeof(struct updlrm_launch_args), UPDLRM_SYM_ARGS, msg, msg_len);
    if (code == UPDLRM_DRV_OK && request_bytes > 0)
        code = xfer_all(drv, DPU_XFER_TO_DPU, DPU_MRAM_HEAP_POINTER_NAME, request_offset, request, request_stride,
                        request_bytes, "request", msg, msg_len);
    times->cpu_to_dpu_s += now_s() - t0;
    times->request_push_bytes = request_bytes;
    return code;
}

int updlrm_driver_launch_async(struct updlrm_driver *drv, struct updlrm_fault *fault, char *msg, size_t msg_len)
{
    dpu_error_t err;
    if (drv == NULL || fault == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_launch_async: NULL argument");
    if (drv->running)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_launch_async: a launch is already running");
    memset(fault, 0, sizeof(*fault));
    fault->dpu = -1;
    fault->tasklet = -1;
    drv->launch_t0 = now_s();
    err = dpu_launch(drv->set, DPU_ASYNCHRONOUS);
    if (err != DPU_OK) {
        describe_fault(drv, err, fault);
        return fail(UPDLRM_DRV_ERR_FAULT, msg, msg_len, "DPU %d tasklet %d faulted: %s", fault->dpu, fault->tasklet,
                    fault->reason);
    }
    drv->running = 1;
    return UPDLRM_DRV_OK;
}

int updlrm_driver_wait(struct updlrm_driver *drv, struct updlrm_status *status, struct updlrm_launch_times *times,
                       struct updlrm_fault *fault, char *msg, size_t msg_len)
{
    dpu_error_t err;
    uint32_t i;
    int code;
    double t2, t3;
    if (drv == NULL || status == NULL || times == NULL || fault == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_wait: NULL argument");
    if (!drv->running)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_wait: no launch is running");
    memset(fault, 0, sizeof(*fault));
    fault->dpu = -1;
    fault->tasklet = -1;
    err = dpu_sync(drv->set);
    drv->running = 0;
    t2 = now_s();
    times->kernel_s += t2 - drv->launch_t0;
    if (err != DPU_OK) {
        describe_fault(drv, err, fault);
        return fail(UPDLRM_DRV_ERR_FAULT, msg, msg_len, "DPU %d tasklet %d faulted: %s", fault->dpu, fault->tasklet,
                    fault->reason);
    }
    /* Status of every DPU. */
    code = xfer_all(drv, DPU_XFER_FROM_DPU, UPDLRM_SYM_STATUS, 0, status, sizeof(struct updlrm_status),
                    sizeof(struct updlrm_status), UPDLRM_SYM_STATUS, msg, msg_len);
    t3 = now_s();
    times->status_s += t3 - t2;
    if (code != UPDLRM_DRV_OK)
        return code;
    for (i = 0; i < drv->nr_dpus; i++) {
        const struct updlrm_status *st = &status[i];
        if (st->abi_version != UPDLRM_ABI_VERSION) {
            fault->dpu = (int32_t)i;
            fault->kernel_code = UPDLRM_ERR_ABI_VERSION;
            fault->bad_value = st->abi_version;
            snprintf(fault->reason, sizeof(fault->reason), "kernel ABI version %u, host expects %u (rebuild the kernel)",
                     st->abi_version, UPDLRM_ABI_VERSION);
            return fail(UPDLRM_DRV_ERR_KERNEL, msg, msg_len, "DPU %u: %s", i, fault->reason);
        }
        if (st->code != UPDLRM_OK) {
            fault->dpu = (int32_t)i;
            fault->tasklet = (int32_t)st->bad_tasklet;
            fault->kernel_code = st->code;
            fault->bad_bag = st->bad_bag;
            fault->bad_value = st->bad_value;
            if (st->bad_bag == UPDLRM_NO_BAG)
                snprintf(fault->reason, sizeof(fault->reason), "kernel error %u (%s), value %u", st->code,
                         kernel_code_name(st->code), st->bad_value);
            else
                snprintf(fault->reason, sizeof(fault->reason), "kernel error %u (%s) at bag %u, value %u", st->code,
                         kernel_code_name(st->code), st->bad_bag, st->bad_value);
            return fail(UPDLRM_DRV_ERR_KERNEL, msg, msg_len, "DPU %u tasklet %u: %s", i, st->bad_tasklet,
                        fault->reason);
        }
    }
    return UPDLRM_DRV_OK;
}

int updlrm_driver_pull(struct updlrm_driver *drv, uint8_t *output, size_t output_stride, uint32_t output_offset,
                       size_t output_bytes, struct updlrm_launch_times *times, char *msg, size_t msg_len)
{
    int code = UPDLRM_DRV_OK;
    double t0;
    if (drv == NULL || times == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_pull: NULL argument");
    if (drv->running)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_pull: a launch is still running (call updlrm_driver_wait)");
    if (output_bytes % 8 != 0 || output_offset % 8 != 0)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len,
                    "updlrm_driver_pull: output %zu B at %u: both must be multiples of 8", output_bytes, output_offset);
    if (output_bytes > 0 && (output == NULL || output_stride < output_bytes))
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_pull: output stride smaller than the transfer");
    t0 = now_s();
    /* DPU -> CPU: the partial sums, one push padded to the largest output. */
    if (output_bytes > 0)
        code = xfer_all(drv, DPU_XFER_FROM_DPU, DPU_MRAM_HEAP_POINTER_NAME, output_offset, output, output_stride,
                        output_bytes, "output", msg, msg_len);
    times->dpu_to_cpu_s += now_s() - t0;
    times->output_pull_bytes = output_bytes;
    return code;
}

void updlrm_driver_close(struct updlrm_driver *drv)
{
    if (drv == NULL)
        return;
    if (drv->running)
        (void)dpu_sync(drv->set); /* never free DPUs under a running kernel */
    dpu_free(drv->set);
    free(drv);
}

#ifdef UPDLRM_EMULATOR
int updlrm_driver_emu_counters(struct updlrm_driver *drv, struct dpu_emu_counters *out, char *msg, size_t msg_len)
{
    dpu_error_t err;
    if (drv == NULL || out == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_emu_counters: NULL argument");
    err = dpu_emu_get_counters(drv->set, out);
    if (err != DPU_OK)
        return fail_dpu(err, msg, msg_len, "dpu_emu_get_counters");
    return UPDLRM_DRV_OK;
}

int updlrm_driver_emu_reset_transfer_counters(struct updlrm_driver *drv, char *msg, size_t msg_len)
{
    dpu_error_t err;
    if (drv == NULL)
        return fail(UPDLRM_DRV_ERR_ARG, msg, msg_len, "updlrm_driver_emu_reset_transfer_counters: NULL argument");
    err = dpu_emu_reset_transfer_counters(drv->set);
    if (err != DPU_OK)
        return fail_dpu(err, msg, msg_len, "dpu_emu_reset_transfer_counters");
    return UPDLRM_DRV_OK;
}
#endif
