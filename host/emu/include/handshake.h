/*
 * handshake.h - point-to-point tasklet synchronization, emulator version (SDK names).
 * handshake_notify() blocks until another tasklet waits for this one; handshake_wait_for(id)
 * blocks until tasklet `id` notifies. Both return 0 on success.
 */
#ifndef _DPUSYSCORE_HANDSHAKE_H_
#define _DPUSYSCORE_HANDSHAKE_H_

#include "defs.h"

static inline int handshake_notify(void) { return __UPDLRM_RT->handshake_notify(); }
static inline int handshake_wait_for(sysname_t notifier) { return __UPDLRM_RT->handshake_wait_for(notifier); }

#endif
