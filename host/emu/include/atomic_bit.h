/*
 * atomic_bit.h - the DPU's atomic bits, emulator version (SDK macro names). On a DPU a mutex,
 * a barrier or a semaphore is backed by one bit of a 256-bit atomic register; programs that build
 * those by hand take the bit's address with ATOMIC_BIT_GET. On the emulator the bits are plain
 * bytes: their addresses are unique keys and nothing else reads them.
 *   ATOMIC_BIT_INIT(name)       defines the bit (append [N] for an array of bits)
 *   ATOMIC_BIT_GET(name)        the bit (an lvalue; &ATOMIC_BIT_GET(name) its address)
 *   ATOMIC_BIT_EXTERN(name)     declares a bit defined in another file
 */
#ifndef _DPUSYSCORE_ATOMIC_BIT_H_
#define _DPUSYSCORE_ATOMIC_BIT_H_

#include <stdint.h>
#include "attributes.h"

#define ATOMIC_BIT_GET(_name) __atomic_bit_##_name
#define ATOMIC_BIT_INIT(_name) uint8_t __atomic_bit_##_name
#define ATOMIC_BIT_EXTERN(_name) extern uint8_t __atomic_bit_##_name

#endif
