/* sched.c - (being written) tasklet scheduler and DPU runtime of the emulator. */
#include "dpu.h"
