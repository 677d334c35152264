/*
 * seqread.h - sequential MRAM reader, emulator version (SDK names): a WRAM cache of
 * SEQREAD_CACHE_SIZE bytes per reader, refilled with mram_read. seqread_alloc() returns the cache
 * (from mem_alloc); seqread_init(cache, mram_addr, &reader) returns a WRAM pointer to the first
 * byte; seqread_get(ptr, increment, &reader) advances by `increment` (<= SEQREAD_CACHE_SIZE)
 * bytes and returns the new WRAM pointer.
 */
#ifndef _DPUSYSCORE_SEQREAD_H_
#define _DPUSYSCORE_SEQREAD_H_

#include <stdint.h>
#include "alloc.h"
#include "mram.h"

#ifndef SEQREAD_CACHE_SIZE
#define SEQREAD_CACHE_SIZE 256
#endif

typedef struct {
    uint8_t *cache;
    uintptr_t mram_addr; /* MRAM address of cache[0], 8-byte aligned */
} seqreader_t;

static inline void *seqread_alloc(void) { return mem_alloc(2 * SEQREAD_CACHE_SIZE); }

/* Fills the cache so that it covers [addr, addr + SEQREAD_CACHE_SIZE). */
static inline void *updlrm_seqread_fill(seqreader_t *reader, uintptr_t addr)
{
    uintptr_t aligned = addr & ~(uintptr_t)7;
    mram_read((const __mram_ptr void *)aligned, reader->cache, 2 * SEQREAD_CACHE_SIZE);
    reader->mram_addr = aligned;
    return reader->cache + (addr - aligned);
}

static inline void *seqread_init(void *cache, __mram_ptr void *mram_addr, seqreader_t *reader)
{
    reader->cache = (uint8_t *)cache;
    return updlrm_seqread_fill(reader, (uintptr_t)mram_addr);
}

static inline void *seqread_get(void *ptr, uint32_t increment, seqreader_t *reader)
{
    uintptr_t addr = reader->mram_addr + (uintptr_t)((uint8_t *)ptr - reader->cache) + increment;
    if (addr + SEQREAD_CACHE_SIZE > reader->mram_addr + 2 * SEQREAD_CACHE_SIZE)
        return updlrm_seqread_fill(reader, addr);
    return reader->cache + (addr - reader->mram_addr);
}

#endif
