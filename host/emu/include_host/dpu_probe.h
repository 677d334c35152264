/*
 * dpu_probe.h - the SDK's energy/time probes, emulator version (SDK names). The emulator measures
 * no energy: the probe functions exist so that programs build, init/start/stop succeed, and
 * dpu_probe_get() fails with DPU_ERR_INTERNAL and says why (programs guard their use with an
 * option such as PrIM's ENERGY=0).
 */
#ifndef UPDLRM_EMU_DPU_PROBE_H
#define UPDLRM_EMU_DPU_PROBE_H

#include "dpu.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum _dpu_probe_option_t {
    DPU_ENERGY = 0,
    DPU_TIME = 1,
    DPU_INSTANT_POWER = 2,
    DPU_AVERAGE_POWER = 3,
} dpu_probe_option_t;

typedef enum _dpu_probe_mode_t {
    DPU_AVERAGE = 0,
    DPU_ACCUMULATE = 1,
    DPU_MINIMUM = 2,
    DPU_MAXIMUM = 3,
} dpu_probe_mode_t;

struct dpu_probe_t {
    const char *name;
    int running;
};

dpu_error_t dpu_probe_init(const char *name, struct dpu_probe_t *probe);
dpu_error_t dpu_probe_deinit(struct dpu_probe_t *probe);
dpu_error_t dpu_probe_start(struct dpu_probe_t *probe);
dpu_error_t dpu_probe_stop(struct dpu_probe_t *probe);
dpu_error_t dpu_probe_get(struct dpu_probe_t *probe, dpu_probe_option_t option, dpu_probe_mode_t mode, double *value);

#ifdef __cplusplus
}
#endif

#endif
