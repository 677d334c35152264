/*
 * sync.c - semaphores, mutex_trylock and the persistent WRAM heap on the emulator.
 * Producer/consumer: tasklet 0 produces ITEMS values into a one-slot buffer guarded by two
 * semaphores; tasklets 1..NR_TASKLETS-1 consume them. `consumed_sum` must equal 1 + ... + ITEMS.
 * The heap: at the first launch tasklet 0 allocates a block and stores 0xC0FFEE + launch in it;
 * later launches (no mem_reset) find the same pointer and the previous value in it.
 */
#include <alloc.h>
#include <barrier.h>
#include <defs.h>
#include <mutex.h>
#include <sem.h>
#include <stdint.h>

#ifndef ITEMS
#define ITEMS 200
#endif

BARRIER_INIT(bar, NR_TASKLETS);
SEMAPHORE_INIT(empty, 1);
SEMAPHORE_INIT(full, 0);
MUTEX_INIT(mtx);
__host uint64_t consumed_sum;
__host uint32_t consumed_count;
__host uint32_t trylock_busy;   /* trylock that failed while another tasklet held the mutex */
__host uint32_t heap_prev;      /* value found in the persistent heap block */
__host uint32_t launch_no;
uint32_t slot;
uint32_t produced;
uint32_t *block;

int main(void)
{
    unsigned t = me();
    if (t == 0) {
        consumed_sum = 0;
        consumed_count = 0;
        trylock_busy = 0;
        produced = 0;
        launch_no++;
        if (!block)
            block = (uint32_t *)mem_alloc(64);
        heap_prev = *block;
        *block = 0xC0FFEE + launch_no;
    }
    barrier_wait(&bar);
    if (t == 0) {
        for (uint32_t v = 1; v <= ITEMS; v++) {
            sem_take(&empty);
            slot = v;
            sem_give(&full);
        }
        /* One poison value per consumer. */
        for (unsigned k = 1; k < NR_TASKLETS; k++) {
            sem_take(&empty);
            slot = 0;
            sem_give(&full);
        }
    } else {
        for (;;) {
            sem_take(&full);
            uint32_t v = slot;
            sem_give(&empty);
            if (v == 0)
                break;
            mutex_lock(mtx);
            consumed_sum += v;
            consumed_count++;
            mutex_unlock(mtx);
        }
    }
    barrier_wait(&bar);
    if (t == 1) {
        mutex_lock(mtx);
        barrier_wait(&bar); /* tasklet 2 tries the lock while tasklet 1 holds it */
        barrier_wait(&bar);
        mutex_unlock(mtx);
    } else {
        barrier_wait(&bar);
        if (t == 2 && !mutex_trylock(mtx))
            trylock_busy = 1;
        barrier_wait(&bar);
    }
    return 0;
}
