/*
 * updlrm_abi.h - the one header shared by the host and the embedding-lookup DPU kernel.
 *
 * Every struct that crosses the host/DPU boundary and every symbol name the host addresses is
 * defined here, with fixed-width fields, explicit padding and static size checks, so that the
 * 32-bit DPU compiler (dpu-upmem-dpurte-clang), the 64-bit host compiler (emulator build) and
 * the host driver all agree on the layout. The host never types a raw symbol string or offset:
 * it uses the UPDLRM_SYM_* macros and the offsets carried in struct updlrm_launch_args.
 *
 * MRAM layout of one DPU (all offsets are bytes from DPU_MRAM_HEAP_POINTER, multiples of 8):
 *
 *   heap + 0                    table shards: row-major rows of the shard's dtype, packed, each row
 *                               padded to 8 bytes (UPDLRM_ROW_BYTES)
 *   heap + args.bags_offset     struct updlrm_bag[args.nr_bags]        } the request, pushed by
 *   heap + args.lookups_offset  uint32_t local_row[args.nr_lookups]    } the host each batch
 *   heap + args.out_offset      per-bag partial sums, each bag at bag.out_offset, one padded row of
 *                               4-byte sums (fp32 for fp32 shards, int32 otherwise: UPDLRM_OUT_ROW_BYTES)
 *
 * Shard descriptors live in the MRAM array UPDLRM_SYM_SHARDS (written once when tables load).
 */
#ifndef UPDLRM_ABI_H
#define UPDLRM_ABI_H

#include <stdint.h>

/* v2: status._pad became status.bad_tasklet; codes 6 and 7 added; UPDLRM_MRAM_BYTES added.
 * v3: dtypes INT16 and INT8 (packed rows, summed in int32, int32 partial sums); a shard's row_bytes
 *     follows its dtype (UPDLRM_ROW_BYTES), its partial-sum row is UPDLRM_OUT_ROW_BYTES. */
#define UPDLRM_ABI_VERSION 3u

/* Element types of a shard. Every integer type is summed in int32 and returned as int32 partial
 * sums: value = q_sum / scale(column), applied by the host (the DPU never multiplies). */
#define UPDLRM_DTYPE_FP32 0u  /* IEEE fp32, accumulated in fp32 (software float on a real DPU) */
#define UPDLRM_DTYPE_INT32 1u /* int32 fixed point */
#define UPDLRM_DTYPE_INT16 2u /* int16, 2 bytes per element */
#define UPDLRM_DTYPE_INT8 3u  /* int8, 1 byte per element */
#define UPDLRM_NR_DTYPES 4u
/* Bytes of one fp32 / int32 element and of one partial-sum element (any dtype). */
#define UPDLRM_ELEM_BYTES 4u
#define UPDLRM_SUM_BYTES 4u
/* Bytes per stored element of a dtype (any value >= UPDLRM_NR_DTYPES is invalid: 0). */
#define UPDLRM_DTYPE_BYTES(dtype)                                                         \
    ((dtype) == UPDLRM_DTYPE_INT8 ? 1u : (dtype) == UPDLRM_DTYPE_INT16 ? 2u               \
     : ((dtype) == UPDLRM_DTYPE_FP32 || (dtype) == UPDLRM_DTYPE_INT32) ? 4u : 0u)
/* Bytes of one stored row of nr_cols elements (padded to 8), and of its partial-sum row. */
#define UPDLRM_ROW_BYTES(nr_cols, dtype) ((((nr_cols) * UPDLRM_DTYPE_BYTES(dtype)) + 7u) & ~7u)
#define UPDLRM_OUT_ROW_BYTES(nr_cols) ((((nr_cols) * UPDLRM_SUM_BYTES) + 7u) & ~7u)

/* Limits. */
#define UPDLRM_MAX_SHARDS 4096u   /* shard descriptors per DPU */
#define UPDLRM_MAX_TASKLETS 24u   /* v1A has 24 hardware threads, v1B 16 */
#define UPDLRM_MAX_DMA_BYTES 2048u
#define UPDLRM_MRAM_ALIGN 8u
#define UPDLRM_MRAM_BYTES (64u << 20) /* MRAM bank per DPU; the kernel never addresses beyond it */

/* Kernel status codes (struct updlrm_status.code). */
#define UPDLRM_OK 0u
#define UPDLRM_ERR_ABI_VERSION 1u  /* args.abi_version != UPDLRM_ABI_VERSION */
#define UPDLRM_ERR_BAD_SHARD 2u    /* a bag names a shard >= args.nr_shards */
#define UPDLRM_ERR_BAD_ROW 3u      /* a lookup's local row >= its shard's nr_rows */
#define UPDLRM_ERR_BAD_LAYOUT 4u   /* offsets in args overlap or are not 8-byte aligned */
#define UPDLRM_ERR_BAD_DTYPE 5u    /* a shard's dtype is not one of UPDLRM_DTYPE_* */
#define UPDLRM_ERR_BAD_SHARD_DESC 6u /* a shard descriptor is inconsistent (alignment, row_bytes,
                                       extent past args.bags_offset); bad_value = shard id */
#define UPDLRM_ERR_BAD_BAG 7u       /* a bag's lookups run past args.nr_lookups or its output past
                                       args.out_bytes / unaligned; bad_value = bag.first_lookup */
/* bad_bag is UPDLRM_NO_BAG when the error is not tied to a bag (args, shard descriptors). */
#define UPDLRM_NO_BAG 0xFFFFFFFFu

/* Symbol identifiers (used by the kernel) and their names as strings (used by the host). */
#define UPDLRM_ARGS updlrm_args
#define UPDLRM_STATUS updlrm_status
#define UPDLRM_SHARDS updlrm_shards
#define UPDLRM_STR_(x) #x
#define UPDLRM_STR(x) UPDLRM_STR_(x)
#define UPDLRM_SYM_ARGS UPDLRM_STR(UPDLRM_ARGS)     /* WRAM, struct updlrm_launch_args */
#define UPDLRM_SYM_STATUS UPDLRM_STR(UPDLRM_STATUS) /* WRAM, struct updlrm_status */
#define UPDLRM_SYM_SHARDS UPDLRM_STR(UPDLRM_SHARDS) /* MRAM, struct updlrm_shard[MAX_SHARDS] */
/* The MRAM heap is addressed by the SDK's own name, DPU_MRAM_HEAP_POINTER_NAME
 * ("__sys_used_mram_end"), which both dpu.h and the emulator's dpu.h provide. */

#if defined(__cplusplus)
#define UPDLRM_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define UPDLRM_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* One table shard resident on this DPU: rows [0, nr_rows) of nr_cols elements each. Which global
 * rows and columns they are is known only to the host (the plan); the kernel sees local rows. */
struct updlrm_shard {
    uint32_t mram_offset; /* byte offset of local row 0 from the MRAM heap, multiple of 8 */
    uint32_t nr_rows;     /* local rows in this shard */
    uint32_t nr_cols;     /* elements per row (row width before padding) */
    uint32_t row_bytes;   /* bytes per stored row: UPDLRM_ROW_BYTES(nr_cols, dtype) */
    uint32_t dtype;       /* UPDLRM_DTYPE_* */
    uint32_t table;       /* the model's table index, for error reports only */
    uint32_t _pad[2];
};
UPDLRM_STATIC_ASSERT(sizeof(struct updlrm_shard) == 32, "updlrm_shard must be 32 bytes");

/* One bag (one sample of one table, restricted to one shard): sum nr_lookups rows of `shard`
 * whose local row ids are local_row[first_lookup .. first_lookup + nr_lookups), and write the
 * sum (UPDLRM_OUT_ROW_BYTES(nr_cols) bytes: fp32 or int32) at out_offset bytes from args.out_offset.
 * Bags are stored in increasing first_lookup order with no gaps: tasklets split them by
 * lookup count using first_lookup. */
struct updlrm_bag {
    uint32_t shard;
    uint32_t nr_lookups;
    uint32_t first_lookup;
    uint32_t out_offset;
};
UPDLRM_STATIC_ASSERT(sizeof(struct updlrm_bag) == 16, "updlrm_bag must be 16 bytes");

/* Per-launch arguments, a WRAM __host variable written by the host before every launch. */
struct updlrm_launch_args {
    uint32_t abi_version;    /* must equal UPDLRM_ABI_VERSION */
    uint32_t nr_shards;      /* valid entries in UPDLRM_SHARDS */
    uint32_t nr_bags;
    uint32_t nr_lookups;
    uint32_t bags_offset;    /* from the MRAM heap, multiple of 8 */
    uint32_t lookups_offset; /* from the MRAM heap, multiple of 8 */
    uint32_t out_offset;     /* from the MRAM heap, multiple of 8 */
    uint32_t out_bytes;      /* bytes of partial sums this launch writes */
};
UPDLRM_STATIC_ASSERT(sizeof(struct updlrm_launch_args) == 32, "updlrm_launch_args must be 32 bytes");

/* Per-launch result, a WRAM __host variable the host reads after every launch. */
struct updlrm_status {
    uint32_t abi_version;  /* UPDLRM_ABI_VERSION of the kernel binary */
    uint32_t code;         /* UPDLRM_OK or UPDLRM_ERR_* (first error seen) */
    uint32_t bad_bag;      /* bag index that raised `code` */
    uint32_t bad_value;    /* offending value (shard id, local row, dtype, ...) */
    uint32_t nr_tasklets;  /* NR_TASKLETS the kernel was built with */
    uint32_t bad_tasklet;  /* tasklet that raised `code` */
    uint64_t cycles[UPDLRM_MAX_TASKLETS];  /* perfcounter cycles per tasklet for this launch */
    uint32_t lookups[UPDLRM_MAX_TASKLETS]; /* lookups done per tasklet for this launch */
};
UPDLRM_STATIC_ASSERT(sizeof(struct updlrm_status) == 24 + 8 * UPDLRM_MAX_TASKLETS + 4 * UPDLRM_MAX_TASKLETS,
                     "updlrm_status size mismatch");
UPDLRM_STATIC_ASSERT(sizeof(struct updlrm_status) % 8 == 0, "updlrm_status must be a multiple of 8 bytes");

#endif /* UPDLRM_ABI_H */
