/* smoke_kernel.c - the kernel host/emu/tests/smoke.c runs: a mutex counter, a per-DPU launch
 * count and the sum of four words read by DMA, written back after them. */
#include <defs.h>
#include <mram.h>
#include <alloc.h>
#include <barrier.h>
#include <mutex.h>
#include <stdio.h>
BARRIER_INIT(bar, NR_TASKLETS);
MUTEX_INIT(mtx);
__host uint32_t counter;
__host uint32_t launches;
__dma_aligned uint64_t buf[4];
int main(void) {
  if (me() == 0) { counter = 0; launches++; mem_reset(); }
  barrier_wait(&bar);
  mutex_lock(mtx); counter++; mutex_unlock(mtx);
  barrier_wait(&bar);
  if (me() == 0) {
    mram_read(DPU_MRAM_HEAP_POINTER, buf, 32);
    uint64_t s = buf[0] + buf[1] + buf[2] + buf[3];
    buf[0] = s;
    mram_write(buf, (__mram_ptr uint8_t *)DPU_MRAM_HEAP_POINTER + 32, 8);
    printf("tasklet %u sum %llu counter %u\n", me(), (unsigned long long)s, counter);
  }
  return 0;
}
