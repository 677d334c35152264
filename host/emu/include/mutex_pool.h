/*
 * mutex_pool.h - a pool of mutexes indexed by a key, emulator version (SDK names).
 * MUTEX_POOL_INIT(name, size) defines `size` mutexes (a power of two is usual); mutex_pool_lock
 * (&name, key) / mutex_pool_unlock(&name, key) lock the mutex key % size.
 */
#ifndef _DPUSYSCORE_MUTEX_POOL_H_
#define _DPUSYSCORE_MUTEX_POOL_H_

#include <stdint.h>
#include "mutex.h"

struct mutex_pool {
    uint32_t size;
    struct updlrm_emu_mutex *mutexes;
};

#define MUTEX_POOL_INIT(_name, _size)                                   \
    struct updlrm_emu_mutex _name##__updlrm_pool[(_size)];             \
    struct mutex_pool _name = {(uint32_t)(_size), _name##__updlrm_pool}

static inline void mutex_pool_lock(struct mutex_pool *pool, uint32_t key)
{
    __UPDLRM_RT->mutex_lock(&pool->mutexes[key % pool->size]);
}

static inline void mutex_pool_unlock(struct mutex_pool *pool, uint32_t key)
{
    __UPDLRM_RT->mutex_unlock(&pool->mutexes[key % pool->size]);
}

#endif
