/*
 * dpu.h - the UPMEM host library's API (libdpu) as implemented by the updlrm emulator (host/emu).
 *
 * Type names, function prototypes, macro names and enum values follow the UPMEM SDK's public API
 * so that an unchanged host program (PrIM, SimplePIM-style code, ...) compiles against this header
 * and links with libupdlrm_emu. Written from the SDK's public documentation and API facts; no SDK
 * file is copied.
 *
 * Emulator specifics: a program for dpu_load() is a kernel shared object built by
 * dpu-upmem-dpurte-clang (the drop-in command, `eval "$(updlrm emu env)"`), updlrm_add_emu_kernel()
 * (CMake) or updlrm.emu.compile_kernel() (Python). Profiles accept "backend=emulator" (the
 * default), "nrDpus=N" (the system size for DPU_ALLOCATE_ALL, default 64), "nrDpusPerRank=N"
 * (default 64), "workers=N", "schedule=rr|random|run" with "seed=S", "strict=0|1" and
 * "timeoutMs=T"; other keys (the SDK's backends' own) are accepted and ignored.
 */
#ifndef UPDLRM_EMU_DPU_H
#define UPDLRM_EMU_DPU_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status of every API call; the numbering is the SDK's (DPU_ERR_DPU_FAULT is 21). */
typedef enum dpu_error_t {
    DPU_OK = 0,
    DPU_ERR_INTERNAL = 1,
    DPU_ERR_SYSTEM = 2,
    DPU_ERR_DRIVER = 3,
    DPU_ERR_ALLOCATION = 4,
    DPU_ERR_INVALID_DPU_SET = 5,
    DPU_ERR_INVALID_THREAD_ID = 6,
    DPU_ERR_INVALID_NOTIFY_ID = 7,
    DPU_ERR_INVALID_WRAM_ACCESS = 8,
    DPU_ERR_INVALID_IRAM_ACCESS = 9,
    DPU_ERR_INVALID_MRAM_ACCESS = 10,
    DPU_ERR_INVALID_SYMBOL_ACCESS = 11,
    DPU_ERR_MRAM_BUSY = 12,
    DPU_ERR_TRANSFER_ALREADY_SET = 13,
    DPU_ERR_NO_PROGRAM_LOADED = 14,
    DPU_ERR_DIFFERENT_DPU_PROGRAMS = 15,
    DPU_ERR_CORRUPTED_MEMORY = 16,
    DPU_ERR_DPU_DISABLED = 17,
    DPU_ERR_DPU_ALREADY_RUNNING = 18,
    DPU_ERR_INVALID_MEMORY_TRANSFER = 19,
    DPU_ERR_INVALID_LAUNCH_POLICY = 20,
    DPU_ERR_DPU_FAULT = 21,
    DPU_ERR_ELF_INVALID_FILE = 22,
    DPU_ERR_ELF_NO_SUCH_FILE = 23,
    DPU_ERR_ELF_NO_SUCH_SECTION = 24,
    DPU_ERR_TIMEOUT = 25,
    DPU_ERR_INVALID_PROFILE = 26,
    DPU_ERR_UNKNOWN_SYMBOL = 27,
    DPU_ERR_LOG_FORMAT = 28,
    DPU_ERR_LOG_CONTEXT_MISSING = 29,
    DPU_ERR_LOG_BUFFER_TOO_SMALL = 30,
    DPU_ERR_VPD_INVALID_FILE = 31,
    DPU_ERR_VPD_NO_REPAIR = 32,
    DPU_ERR_NO_THREAD_PER_RANK = 33,
    DPU_ERR_INVALID_BUFFER_SIZE = 34,
    DPU_ERR_NONBLOCKING_SYNC_CALLBACK = 35,
    DPU_ERR_TOO_MANY_TASKLETS = 36,
    DPU_ERR_SG_TOO_MANY_BLOCKS = 37,
    DPU_ERR_SG_LENGTH_MISMATCH = 38,
    DPU_ERR_SG_NOT_ACTIVATED = 39,
    DPU_ERR_SG_NOT_MRAM_SYMBOL = 40,
    DPU_ERR_ASYNC_JOBS = (int)(1U << 31),
} dpu_error_t;

/* The SDK documents that the caller owns (and frees) the returned string. */
char *dpu_error_to_string(dpu_error_t status);

typedef enum _dpu_launch_policy_t {
    DPU_ASYNCHRONOUS = 0,
    DPU_SYNCHRONOUS = 1,
} dpu_launch_policy_t;

typedef enum _dpu_xfer_t {
    DPU_XFER_TO_DPU = 0,
    DPU_XFER_FROM_DPU = 1,
} dpu_xfer_t;

typedef enum _dpu_xfer_flags_t {
    DPU_XFER_DEFAULT = 0,
    DPU_XFER_NO_RESET = 1 << 0,
    DPU_XFER_ASYNC = 1 << 1,
    DPU_XFER_PARALLEL = 1 << 2,
} dpu_xfer_flags_t;

typedef enum _dpu_sg_xfer_flags_t {
    DPU_SG_XFER_DEFAULT = 0,
    DPU_SG_XFER_ASYNC = 1 << 1,
    DPU_SG_XFER_DISABLE_LENGTH_CHECK = 1 << 2,
} dpu_sg_xfer_flags_t;

typedef enum _dpu_callback_flags_t {
    DPU_CALLBACK_DEFAULT = 0,
    DPU_CALLBACK_ASYNC = 1 << 0,
    DPU_CALLBACK_NONBLOCKING = 1 << 1,
    DPU_CALLBACK_SINGLE_CALL = 1 << 2,
} dpu_callback_flags_t;

/* Allocate every DPU of the (emulated) system. */
#define DPU_ALLOCATE_ALL (UINT_MAX)
/* Host name of DPU_MRAM_HEAP_POINTER: the MRAM heap, from the end of static MRAM data to 64 MiB. */
#define DPU_MRAM_HEAP_POINTER_NAME "__sys_used_mram_end"

struct dpu_t;         /* one DPU (opaque) */
struct dpu_rank_t;    /* one rank (opaque) */
struct dpu_program_t; /* a loaded kernel (opaque) */

enum dpu_set_kind_t {
    DPU_SET_RANKS = 0,
    DPU_SET_DPU = 1,
};

/* A set of ranks, or one DPU, passed by value as in the SDK. */
struct dpu_set_t {
    enum dpu_set_kind_t kind;
    union {
        struct {
            uint32_t nr_ranks;
            struct dpu_rank_t **ranks;
        } list;
        struct dpu_t *dpu;
    };
};

/* A symbol of the loaded program: its DPU address (WRAM byte address, or 0x08000000 + the MRAM
 * offset for MRAM variables) and size in bytes. */
struct dpu_symbol_t {
    uint32_t address;
    uint32_t size;
};

/* Scatter/gather transfers: get_block_info->f(out, dpu_index, block_index, args) describes the
 * host blocks of one DPU in order and returns false after the last one. */
struct sg_block_info {
    uint8_t *addr;
    uint32_t length;
};
typedef bool (*get_block_func_t)(struct sg_block_info *out, uint32_t dpu_index, uint32_t block_index, void *args);
typedef struct get_block_t {
    get_block_func_t f;
    void *args;
    size_t args_size;
} get_block_t;

/* Allocation */
dpu_error_t dpu_alloc(uint32_t nr_dpus, const char *profile, struct dpu_set_t *dpu_set);
dpu_error_t dpu_alloc_ranks(uint32_t nr_ranks, const char *profile, struct dpu_set_t *dpu_set);
dpu_error_t dpu_free(struct dpu_set_t dpu_set);
dpu_error_t dpu_get_nr_ranks(struct dpu_set_t dpu_set, uint32_t *nr_ranks);
dpu_error_t dpu_get_nr_dpus(struct dpu_set_t dpu_set, uint32_t *nr_dpus);

/* Programs and execution */
dpu_error_t dpu_load(struct dpu_set_t dpu_set, const char *binary_path, struct dpu_program_t **program);
dpu_error_t dpu_get_symbol(struct dpu_program_t *program, const char *symbol_name, struct dpu_symbol_t *symbol);
dpu_error_t dpu_launch(struct dpu_set_t dpu_set, dpu_launch_policy_t policy);
dpu_error_t dpu_status(struct dpu_set_t dpu_set, bool *done, bool *fault);
dpu_error_t dpu_sync(struct dpu_set_t dpu_set);
dpu_error_t dpu_callback(struct dpu_set_t dpu_set, dpu_error_t (*callback)(struct dpu_set_t, uint32_t, void *),
                         void *args, dpu_callback_flags_t flags);

/* Transfers */
dpu_error_t dpu_copy_to(struct dpu_set_t dpu_set, const char *symbol_name, uint32_t symbol_offset,
                        const void *src, size_t length);
dpu_error_t dpu_copy_from(struct dpu_set_t dpu_set, const char *symbol_name, uint32_t symbol_offset, void *dst,
                          size_t length);
dpu_error_t dpu_copy_to_symbol(struct dpu_set_t dpu_set, struct dpu_symbol_t symbol, uint32_t symbol_offset,
                               const void *src, size_t length);
dpu_error_t dpu_copy_from_symbol(struct dpu_set_t dpu_set, struct dpu_symbol_t symbol, uint32_t symbol_offset,
                                 void *dst, size_t length);
dpu_error_t dpu_broadcast_to(struct dpu_set_t dpu_set, const char *symbol_name, uint32_t symbol_offset,
                             const void *src, size_t length, dpu_xfer_flags_t flags);
dpu_error_t dpu_broadcast_to_symbol(struct dpu_set_t dpu_set, struct dpu_symbol_t symbol, uint32_t symbol_offset,
                                    const void *src, size_t length, dpu_xfer_flags_t flags);
dpu_error_t dpu_prepare_xfer(struct dpu_set_t dpu_set, void *buffer);
dpu_error_t dpu_push_xfer(struct dpu_set_t dpu_set, dpu_xfer_t xfer, const char *symbol_name,
                          uint32_t symbol_offset, size_t length, dpu_xfer_flags_t flags);
dpu_error_t dpu_push_xfer_symbol(struct dpu_set_t dpu_set, dpu_xfer_t xfer, struct dpu_symbol_t symbol,
                                 uint32_t symbol_offset, size_t length, dpu_xfer_flags_t flags);
dpu_error_t dpu_push_sg_xfer(struct dpu_set_t dpu_set, dpu_xfer_t xfer, const char *symbol_name,
                             uint32_t symbol_offset, size_t length, get_block_t *get_block_info,
                             dpu_sg_xfer_flags_t flags);

/* Raw MRAM of one DPU (struct dpu_t * from dpu_from_set()) */
struct dpu_t *dpu_from_set(struct dpu_set_t dpu_set);
struct dpu_set_t dpu_set_from_dpu(struct dpu_t *dpu);
dpu_error_t dpu_copy_to_mram(struct dpu_t *dpu, uint32_t mram_byte_offset, const uint8_t *source, size_t nb_of_bytes);
dpu_error_t dpu_copy_from_mram(struct dpu_t *dpu, uint8_t *destination, uint32_t mram_byte_offset,
                               size_t nb_of_bytes);

/* printf output of the last launch, one "=== DPU i ===" block per DPU when the set has several */
dpu_error_t dpu_log_read(struct dpu_set_t dpu_set, FILE *stream);

/* Iteration. DPU_FOREACH(set, dpu[, i]) visits every DPU of `set` in order (i = 0, 1, ...);
 * DPU_RANK_FOREACH(set, rank[, i]) every rank. The helpers below are the emulator's. */
uint32_t updlrm_emu_set_size(struct dpu_set_t dpu_set);              /* DPUs in the set */
struct dpu_set_t updlrm_emu_set_dpu(struct dpu_set_t dpu_set, uint32_t i);  /* its i-th DPU */
uint32_t updlrm_emu_set_nr_ranks(struct dpu_set_t dpu_set);
struct dpu_set_t updlrm_emu_set_rank(struct dpu_set_t dpu_set, uint32_t i); /* its i-th rank */

#define UPDLRM_EMU_CAT_(a, b) a##b
#define UPDLRM_EMU_CAT(a, b) UPDLRM_EMU_CAT_(a, b)
#define UPDLRM_EMU_LOOPVAR(name) UPDLRM_EMU_CAT(name, __LINE__)
#define UPDLRM_EMU_PICK3(_1, _2, _3, NAME, ...) NAME

#define UPDLRM_EMU_FOREACH2(_set, _dpu)                                                                   \
    for (uint32_t UPDLRM_EMU_LOOPVAR(__emu_i) = 0, UPDLRM_EMU_LOOPVAR(__emu_n) = updlrm_emu_set_size(_set); \
         UPDLRM_EMU_LOOPVAR(__emu_i) < UPDLRM_EMU_LOOPVAR(__emu_n) &&                                     \
         ((_dpu) = updlrm_emu_set_dpu((_set), UPDLRM_EMU_LOOPVAR(__emu_i)), 1);                          \
         UPDLRM_EMU_LOOPVAR(__emu_i)++)
#define UPDLRM_EMU_FOREACH3(_set, _dpu, _i)                                                                \
    for (uint32_t UPDLRM_EMU_LOOPVAR(__emu_n) = ((_i) = 0, updlrm_emu_set_size(_set));                    \
         (uint32_t)(_i) < UPDLRM_EMU_LOOPVAR(__emu_n) && ((_dpu) = updlrm_emu_set_dpu((_set), (uint32_t)(_i)), 1); \
         (_i)++)
#define DPU_FOREACH(...) \
    UPDLRM_EMU_PICK3(__VA_ARGS__, UPDLRM_EMU_FOREACH3, UPDLRM_EMU_FOREACH2, unused)(__VA_ARGS__)

#define UPDLRM_EMU_RANK_FOREACH2(_set, _rank)                                                                 \
    for (uint32_t UPDLRM_EMU_LOOPVAR(__emu_r) = 0, UPDLRM_EMU_LOOPVAR(__emu_nr) = updlrm_emu_set_nr_ranks(_set); \
         UPDLRM_EMU_LOOPVAR(__emu_r) < UPDLRM_EMU_LOOPVAR(__emu_nr) &&                                        \
         ((_rank) = updlrm_emu_set_rank((_set), UPDLRM_EMU_LOOPVAR(__emu_r)), 1);                             \
         UPDLRM_EMU_LOOPVAR(__emu_r)++)
#define UPDLRM_EMU_RANK_FOREACH3(_set, _rank, _i)                                                             \
    for (uint32_t UPDLRM_EMU_LOOPVAR(__emu_nr) = ((_i) = 0, updlrm_emu_set_nr_ranks(_set));                 \
         (uint32_t)(_i) < UPDLRM_EMU_LOOPVAR(__emu_nr) &&                                                    \
         ((_rank) = updlrm_emu_set_rank((_set), (uint32_t)(_i)), 1);                                         \
         (_i)++)
#define DPU_RANK_FOREACH(...) \
    UPDLRM_EMU_PICK3(__VA_ARGS__, UPDLRM_EMU_RANK_FOREACH3, UPDLRM_EMU_RANK_FOREACH2, unused)(__VA_ARGS__)

/* DPU_CHECK(statement, on_error): print the failure (file, line, function, the error's string)
 * and run `on_error`. DPU_ASSERT exits the program on a failure, as in the SDK: for user
 * programs only, library code must not use it. */
#define DPU_CHECK(statement, on_error)                                                               \
    do {                                                                                             \
        dpu_error_t __updlrm_err = (statement);                                                      \
        if (__updlrm_err != DPU_OK) {                                                                \
            char *__updlrm_s = dpu_error_to_string(__updlrm_err);                                    \
            fprintf(stderr, "%s:%d(%s): DPU Error (%s)\n", __FILE__, __LINE__, __func__,            \
                    __updlrm_s ? __updlrm_s : "unknown error");                                      \
            free(__updlrm_s);                                                                        \
            on_error;                                                                                \
        }                                                                                            \
    } while (0)
#define DPU_ASSERT(statement) DPU_CHECK(statement, exit(EXIT_FAILURE))

#ifdef UPDLRM_EMULATOR
#include "dpu_emu.h"
#endif

#ifdef __cplusplus
}
#endif

#endif /* UPDLRM_EMU_DPU_H */
