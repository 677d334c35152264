// loader_py.h - the Python side of loader.h: a TableImages built from the weights and the image
// spec dict of updlrm/pim/layout.py (image_spec), the fill callback the driver calls, and the
// module functions registered by register_loader.
#ifndef UPDLRM_LOADER_PY_H
#define UPDLRM_LOADER_PY_H

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <memory>
#include <vector>

#include "loader.h"

namespace py = pybind11;

namespace updlrm {

// TableImages plus the Python arrays it points into (keep them alive while it is used).
struct LoadSource {
    std::vector<py::object> keep;
    std::unique_ptr<TableImages> images;
};

// weights: one C-contiguous float32 [rows, dim] array per table; spec: uint32 [S] "dpu", "table",
// "col_lo", "nr_cols", "row_bytes"; uint64 [S] "mram_offset", "nr_rows"; int64 [S] "row_lo",
// "rows_at" (-1 for a row range, else where the shard's row ids start in "rows"); int64 "rows";
// float64 [T] "scales"; "dtype" (UPDLRM_DTYPE_*), "limit". ValueError names what is wrong.
std::unique_ptr<LoadSource> load_source(const py::list &weights, const py::dict &spec, uint32_t nr_dpus);

// ctx of fill_window.
struct FillJob {
    const TableImages *images = nullptr;
    unsigned threads = 1;
    std::atomic<uint64_t> *progress = nullptr;
    double fill_seconds = 0;  // wall time spent building windows (the rest of a load is pushing)
};

// updlrm_shard_fill_fn over a FillJob (never throws).
int fill_window(void *ctx, uint64_t offset, uint64_t length, uint32_t nr, const uint32_t *dpus, uint8_t *dst,
                char *msg, size_t msg_len);

// image_window(weights, spec, nr_dpus, offset, length) and table_stats(weights).
void register_loader(py::module_ &m);

}  // namespace updlrm

#endif  // UPDLRM_LOADER_PY_H
