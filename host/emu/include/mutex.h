/*
 * mutex.h - tasklet mutexes, emulator version (SDK names): MUTEX_INIT(name) defines a mutex,
 * MUTEX_GET(name) gives its id, mutex_lock / mutex_trylock / mutex_unlock use it. A mutex id is
 * only a key: ids that compare equal are the same mutex (a zero-filled mutex_id_t array shares
 * one mutex, as zero-filled ids share atomic bit 0 on a DPU).
 */
#ifndef _DPUSYSCORE_MUTEX_H_
#define _DPUSYSCORE_MUTEX_H_

#include <stdbool.h>
#include "attributes.h"

typedef struct updlrm_emu_mutex *mutex_id_t;

#define MUTEX_GET(_name) (&_name##__updlrm_mutex)
#define MUTEX_INIT(_name) \
    struct updlrm_emu_mutex _name##__updlrm_mutex = {0u}; \
    const mutex_id_t _name = &_name##__updlrm_mutex

static inline void mutex_lock(mutex_id_t mutex) { __UPDLRM_RT->mutex_lock(mutex); }
static inline bool mutex_trylock(mutex_id_t mutex) { return __UPDLRM_RT->mutex_trylock(mutex) != 0; }
static inline void mutex_unlock(mutex_id_t mutex) { __UPDLRM_RT->mutex_unlock(mutex); }

#endif
