/* dpu_api.c - (being written) libdpu API of the emulator. */
#include "dpu.h"
