/*
 * built_ins.h - DPU instruction built-ins, emulator version. Only the portable ones a kernel may
 * use are provided, as plain C.
 */
#ifndef _DPUSYSCORE_BUILT_INS_H_
#define _DPUSYSCORE_BUILT_INS_H_

#include <stdint.h>
#include "attributes.h"

/* Count leading zeros of a 32-bit value (32 for 0). */
static inline uint32_t __builtin_dpu_clz32(uint32_t x) { return x ? (uint32_t)__builtin_clz(x) : 32u; }

#endif
