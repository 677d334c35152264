/*
 * dpu.h - the subset of the UPMEM host library (libdpu) that updlrm uses, with the SDK's names,
 * signatures and error codes, implemented by the updlrm emulator (host/emu). Host code written
 * against this header also builds against the real SDK's dpu.h.
 *
 * Emulator specifics: a "program" for dpu_load() is a <name>.emu.so built by
 * updlrm_add_emu_kernel() (CMake) or updlrm.emu.compile_kernel() (Python). Profiles accept
 * "backend=emulator" (the default), "nrDpus=N" (the system size for DPU_ALLOCATE_ALL, default 64),
 * "nrDpusPerRank=N" (default 64) and "workers=N"; other keys are ignored.
 * dpu_error_to_string() returns a string the caller owns and should free(), as in recent SDKs.
 */
#ifndef UPDLRM_EMU_DPU_H
#define UPDLRM_EMU_DPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dpu_error_t {
    DPU_OK = 0,
    DPU_ERR_INTERNAL,
    DPU_ERR_SYSTEM,
    DPU_ERR_DRIVER,
    DPU_ERR_ALLOCATION,
    DPU_ERR_INVALID_DPU_SET,
    DPU_ERR_INVALID_THREAD_ID,
    DPU_ERR_INVALID_NOTIFY_ID,
    DPU_ERR_INVALID_WRAM_ACCESS,
    DPU_ERR_INVALID_IRAM_ACCESS,
    DPU_ERR_INVALID_MRAM_ACCESS,
    DPU_ERR_INVALID_SYMBOL_ACCESS,
    DPU_ERR_MRAM_BUSY,
    DPU_ERR_TRANSFER_ALREADY_SET,
    DPU_ERR_NO_PROGRAM_LOADED,
    DPU_ERR_DIFFERENT_DPU_PROGRAMS,
    DPU_ERR_CORRUPTED_MEMORY,
    DPU_ERR_DPU_DISABLED,
    DPU_ERR_DPU_ALREADY_RUNNING,
    DPU_ERR_INVALID_MEMORY_TRANSFER,
    DPU_ERR_INVALID_LAUNCH_POLICY,
    DPU_ERR_DPU_FAULT,
    DPU_ERR_ELF_INVALID_FILE,
    DPU_ERR_ELF_NO_SUCH_FILE,
    DPU_ERR_ELF_NO_SUCH_SECTION,
    DPU_ERR_TIMEOUT,
    DPU_ERR_INVALID_PROFILE,
    DPU_ERR_UNKNOWN_PROFILE_PROPERTY,
    DPU_ERR_INVALID_PROFILE_PROPERTY,
    DPU_ERR_UNKNOWN_SYMBOL,
    DPU_ERR_LOG_FORMAT,
    DPU_ERR_LOG_CONTEXT_MISSING,
    DPU_ERR_LOG_BUFFER_TOO_SMALL,
    DPU_ERR_VPD_INVALID_FILE,
    DPU_ERR_NO_SUCH_FILE,
    DPU_ERR_ASYNC_JOBS = (int)(1u << 30),
} dpu_error_t;

typedef enum _dpu_launch_policy_t {
    DPU_ASYNCHRONOUS,
    DPU_SYNCHRONOUS,
} dpu_launch_policy_t;

typedef enum _dpu_xfer_t {
    DPU_XFER_TO_DPU,
    DPU_XFER_FROM_DPU,
} dpu_xfer_t;

typedef enum _dpu_xfer_flags_t {
    DPU_XFER_DEFAULT = 0,
    DPU_XFER_NO_RESET = 1 << 0,
    DPU_XFER_ASYNC = 1 << 1,
    DPU_XFER_PARALLEL = 1 << 2,
} dpu_xfer_flags_t;

/* Allocate every DPU of the (emulated) system. */
#define DPU_ALLOCATE_ALL ((uint32_t)0xffffffffu)
/* Host name of DPU_MRAM_HEAP_POINTER: the MRAM heap, from the end of static MRAM data to 64 MiB. */
#define DPU_MRAM_HEAP_POINTER_NAME "__sys_used_mram_end"

struct updlrm_emu_set;     /* opaque: the emulator's DPU set */
struct dpu_program_t;      /* opaque: a loaded kernel */

/* A DPU set or a single DPU of it, passed by value as in the SDK. */
struct dpu_set_t {
    enum { DPU_SET_RANKS, DPU_SET_DPU } kind;
    struct updlrm_emu_set *set;
    uint32_t first; /* first DPU (index in the set) covered by this handle */
    uint32_t count; /* DPUs covered: the whole set, one rank, or 1 */
};

dpu_error_t dpu_alloc(uint32_t nr_dpus, const char *profile, struct dpu_set_t *dpu_set);
dpu_error_t dpu_alloc_ranks(uint32_t nr_ranks, const char *profile, struct dpu_set_t *dpu_set);
dpu_error_t dpu_free(struct dpu_set_t dpu_set);
dpu_error_t dpu_get_nr_ranks(struct dpu_set_t dpu_set, uint32_t *nr_ranks);
dpu_error_t dpu_get_nr_dpus(struct dpu_set_t dpu_set, uint32_t *nr_dpus);
dpu_error_t dpu_load(struct dpu_set_t dpu_set, const char *binary_path, struct dpu_program_t **program);
dpu_error_t dpu_launch(struct dpu_set_t dpu_set, dpu_launch_policy_t policy);
dpu_error_t dpu_sync(struct dpu_set_t dpu_set);
dpu_error_t dpu_status(struct dpu_set_t dpu_set, bool *done, bool *fault);
dpu_error_t dpu_copy_to(struct dpu_set_t dpu_set, const char *symbol_name, uint32_t symbol_offset,
                        const void *src, size_t length);
dpu_error_t dpu_copy_from(struct dpu_set_t dpu_set, const char *symbol_name, uint32_t symbol_offset,
                          void *dst, size_t length);
dpu_error_t dpu_broadcast_to(struct dpu_set_t dpu_set, const char *symbol_name, uint32_t symbol_offset,
                             const void *src, size_t length, dpu_xfer_flags_t flags);
dpu_error_t dpu_prepare_xfer(struct dpu_set_t dpu_set, void *buffer);
dpu_error_t dpu_push_xfer(struct dpu_set_t dpu_set, dpu_xfer_t xfer, const char *symbol_name,
                          uint32_t symbol_offset, size_t length, dpu_xfer_flags_t flags);
dpu_error_t dpu_log_read(struct dpu_set_t dpu_set, FILE *stream);
const char *dpu_error_to_string(dpu_error_t status);

/* Iteration helpers used by DPU_FOREACH (not part of the SDK's documented API). */
struct dpu_set_t updlrm_emu_set_dpu(struct dpu_set_t dpu_set, uint32_t i);

#define UPDLRM_EMU_FOREACH2(_set, _dpu)                                                          \
    for (uint32_t __updlrm_i = 0, __updlrm_n = ((_dpu) = updlrm_emu_set_dpu((_set), 0), (_set).count); \
         __updlrm_i < __updlrm_n; __updlrm_i++, (_dpu) = updlrm_emu_set_dpu((_set), __updlrm_i))
#define UPDLRM_EMU_FOREACH3(_set, _dpu, _i)                                                    \
    for (uint32_t __updlrm_n = ((_i) = 0, (_dpu) = updlrm_emu_set_dpu((_set), 0), (_set).count); \
         (uint32_t)(_i) < __updlrm_n; (_i)++, (_dpu) = updlrm_emu_set_dpu((_set), (uint32_t)(_i)))
#define UPDLRM_EMU_FOREACH_PICK(_1, _2, _3, NAME, ...) NAME
/* DPU_FOREACH(set, dpu) or DPU_FOREACH(set, dpu, i): visit every DPU of `set` (i = 0, 1, ...). */
#define DPU_FOREACH(...) \
    UPDLRM_EMU_FOREACH_PICK(__VA_ARGS__, UPDLRM_EMU_FOREACH3, UPDLRM_EMU_FOREACH2, unused)(__VA_ARGS__)

/* DPU_ASSERT for user programs (prints and exits, as in the SDK). Library code must not use it. */
#define DPU_ASSERT(_expr)                                                                     \
    do {                                                                                      \
        dpu_error_t __updlrm_err = (_expr);                                                   \
        if (__updlrm_err != DPU_OK) {                                                         \
            fprintf(stderr, "%s:%d (%s): %s\n", __FILE__, __LINE__, #_expr,                   \
                    dpu_error_to_string(__updlrm_err));                                       \
            exit(EXIT_FAILURE);                                                               \
        }                                                                                     \
    } while (0)

#ifdef UPDLRM_EMULATOR
#include "dpu_emu.h"
#endif

#ifdef __cplusplus
}
#endif

#endif /* UPDLRM_EMU_DPU_H */
