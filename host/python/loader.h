// loader.h - MRAM images of a plan's table shards, made window by window straight from the
// weights, so that loading full tables never holds a second copy of them in host memory.
//
// Each DPU's image is its shards laid out from MRAM heap + 0 (struct updlrm_shard describes them
// to the kernel; updlrm/pim/layout.py draws the layout):
//
//     heap + s.mram_offset   row 0 of shard s: nr_cols elements, zeros up to row_bytes
//                            row 1 ...            (nr_rows rows of row_bytes bytes)
//
// TableImages::fill(off, len, ...) writes bytes [off, off + len) of the images of the DPUs whose
// data reach into that window (threads over DPUs), the driver pushes the window to them
// (updlrm_driver_write_shards_with) and the next window reuses the same staging buffer. Element types: fp32 rows are copied; fixed-point types
// store q = rint(w * scale_t) clipped to +-limit (as updlrm.pim.layout.quantize does).
#ifndef UPDLRM_LOADER_H
#define UPDLRM_LOADER_H

#include <atomic>
#include <cstdint>
#include <vector>

namespace updlrm {

// One shard as the loader sees it. Local row i is table row row_lo + i (a row range) or rows[i]
// (a row set, rows != nullptr).
struct ImageShard {
    uint32_t dpu = 0;
    uint32_t table = 0;
    uint32_t col_lo = 0;
    uint32_t nr_cols = 0;
    uint32_t row_bytes = 0;
    uint64_t mram_offset = 0;
    uint64_t nr_rows = 0;
    int64_t row_lo = 0;
    const int64_t *rows = nullptr;
};

// A weight table: [nr_rows, dim] float32, row-major, owned by the caller.
struct WeightTable {
    const float *data = nullptr;
    uint64_t nr_rows = 0;
    uint32_t dim = 0;
};

class TableImages {
  public:
    // Checks every shard against the tables, the dtype and the MRAM size (std::invalid_argument
    // naming the shard) and sorts the shards by DPU and offset. scales: [W] per result column, integer dtypes.
    TableImages(std::vector<WeightTable> tables, std::vector<ImageShard> shards, uint32_t nr_dpus, uint32_t dtype,
                std::vector<double> scales, double limit);

    uint32_t nr_dpus() const { return nr_dpus_; }
    // Image bytes of each DPU (end of its last shard, a multiple of 8) and their sum.
    const std::vector<uint64_t> &data_bytes() const { return data_bytes_; }
    uint64_t total_bytes() const { return total_bytes_; }

    // Bytes [off, off + len) of the image of DPU dpus[k] into dst + k * len for k < nr (zeros
    // where no shard lies); `threads` workers; adds the image bytes written to *progress when given.
    void fill(uint64_t off, uint64_t len, uint32_t nr, const uint32_t *dpus, uint8_t *dst, unsigned threads,
              std::atomic<uint64_t> *progress) const;

  private:
    void fill_dpu(uint32_t d, uint64_t off, uint64_t len, uint8_t *dst) const;
    void put_rows(const ImageShard &s, uint64_t r0, uint64_t r1, uint8_t *out) const;  // local rows [r0, r1)

    std::vector<WeightTable> tables_;
    std::vector<ImageShard> shards_;  // sorted by (dpu, mram_offset)
    std::vector<uint64_t> dpu_ptr_;   // [nr_dpus + 1] -> shards_
    std::vector<uint64_t> data_bytes_;
    uint64_t total_bytes_ = 0;
    uint32_t nr_dpus_ = 0;
    uint32_t dtype_ = 0;
    uint32_t elem_bytes_ = 4;
    std::vector<double> scales_;      // [W] one per result column (integer dtypes)
    std::vector<uint64_t> table_col_;  // [T+1] first result column of each table
    double limit_ = 0;
};

// Element bytes of an UPDLRM_DTYPE_* code; 0 for a code the loader does not know.
uint32_t dtype_elem_bytes(uint32_t dtype);

// Threads for load work: UPDLRM_HOST_THREADS when set, else the machine's cores (at most 16).
unsigned load_threads();

}  // namespace updlrm

#endif  // UPDLRM_LOADER_H
