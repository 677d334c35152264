/*
 * dpu_log.h - reading what DPU kernels printed, emulator version (SDK header name). dpu.h's
 * dpu_log_read(set, stream) covers whole sets; dpulog_read_for_dpu() takes one struct dpu_t *.
 */
#ifndef UPDLRM_EMU_DPU_LOG_H
#define UPDLRM_EMU_DPU_LOG_H

#include <stdio.h>

#include "dpu.h"

#ifdef __cplusplus
extern "C" {
#endif

dpu_error_t dpulog_read_for_dpu(struct dpu_t *dpu, FILE *stream);

#ifdef __cplusplus
}
#endif

#endif
