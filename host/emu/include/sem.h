/*
 * sem.h - counting semaphores, emulator version (SDK names): SEMAPHORE_INIT(name, value),
 * sem_take (blocks while the count is 0) and sem_give.
 */
#ifndef _DPUSYSCORE_SEM_H_
#define _DPUSYSCORE_SEM_H_

#include "attributes.h"

typedef struct updlrm_emu_sem sem_t;

#define SEMAPHORE_INIT(_name, _value) sem_t _name = {(int32_t)(_value), 0u}

static inline void sem_take(sem_t *sem) { __UPDLRM_RT->sem_take(sem); }
static inline void sem_give(sem_t *sem) { __UPDLRM_RT->sem_give(sem); }

#endif
