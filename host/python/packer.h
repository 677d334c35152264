// packer.h - the request packer and result merger of the PIM backend (native, no Python, no libdpu).
//
// The packer turns one batch of lookups, already mapped by Python to (row group, local row), into
// per-DPU kernel requests: for every lookup it picks a replica of its group (least-loaded DPU so
// far in this batch, counted in lookups), emits one entry per column slice of that replica, and
// groups the entries into bags per (DPU, shard, sample) - bags without lookups are not sent. A
// batch whose requests or outputs exceed the plan's per-DPU capacities is cut into several
// launches (between bags, or inside one very large bag: partial sums simply add up).
//
// The merger adds every partial sum into the [B, W] float32 result (W = sum of table dims,
// table t at columns [col_offset_t, col_offset_t + dim_t)): row shards add up, column slices land
// side by side, and integer partials (every dtype but fp32: int32 partial sums) are summed exactly
// in int64 and converted back once per element (value = q / col_scale[column]).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "updlrm_abi.h"

namespace updlrm {

// Static description of a plan, in flat arrays (built once by updlrm/pim/).
struct PlanSpec {
    uint32_t nr_dpus = 0;
    uint32_t nr_tables = 0;
    uint32_t width = 0;  // W: columns of the concatenated result row
    uint32_t dtype = UPDLRM_DTYPE_FP32;
    // Per shard (global shard id s).
    // shard_row_bytes: bytes of one partial-sum row of the shard (UPDLRM_OUT_ROW_BYTES(ncols)).
    std::vector<uint32_t> shard_dpu, shard_local, shard_col, shard_ncols, shard_row_bytes, shard_table;
    // Group g's replicas are replicas[group_rep_ptr[g] .. group_rep_ptr[g+1]); replica r's shards
    // are rep_shards[rep_shard_ptr[r] .. rep_shard_ptr[r+1]).
    std::vector<uint32_t> group_rep_ptr, rep_shard_ptr, rep_shards;
    std::vector<uint32_t> nr_shards_on_dpu;  // descriptors written to each DPU
    std::vector<double> col_scale;           // [W] integer dtypes: scale of the column; fp32: unused
    // MRAM layout, bytes from the heap (same on every DPU).
    uint32_t request_offset = 0, request_capacity = 0, output_offset = 0, output_capacity = 0;
};

// One launch's worth of requests.
struct Launch {
    std::vector<updlrm_launch_args> args;    // [nr_dpus]
    std::vector<uint8_t> request;            // [nr_dpus][request_stride]
    size_t request_stride = 0;               // = the largest request (bytes, multiple of 8)
    size_t output_bytes = 0;                 // the largest output (bytes, multiple of 8)
    // Merge map, per DPU in bag order: the bags (shard, output slot) and their destination sample.
    std::vector<std::vector<updlrm_bag>> bags;
    std::vector<std::vector<uint32_t>> bag_sample;
};

// Per launch and DPU, flattened [launch][dpu]: lookups (row reads), bags, elements accumulated
// (lookups x shard columns), request bytes (bags + padded local rows) and output bytes.
struct PackCounters {
    std::vector<uint64_t> lookups, bags, elements, request_bytes, output_bytes;
};

class Packer {
  public:
    explicit Packer(PlanSpec spec);
    const PlanSpec &spec() const { return spec_; }

    // grp[i], lrow[i]: group and local row of lookup i (i < offsets[T*B]); offsets: T*B+1 bag
    // starts, table-major. Fills out[0 .. nr_launches) (reusing the buffers `out` already holds).
    // Returns "" or an error message (a plan whose capacities cannot hold even one lookup, a group
    // id out of range).
    std::string pack(const int32_t *grp, const uint32_t *lrow, const int64_t *offsets, uint32_t batch_size,
                     std::vector<Launch> &out, size_t &nr_launches, PackCounters &counters);

    // Adds one launch's partial sums (output: [nr_dpus][output_stride] bytes) into result
    // ([B, W] float32, fp32 plans) or acc ([B, W] int64, int32 plans).
    // Samples are split into `threads` ranges merged in parallel; every output element still gets
    // its partial sums in the same order (DPU order, then bag order), so results do not depend on
    // the thread count.
    void merge(const Launch &launch, const uint8_t *output, size_t output_stride, float *result, int64_t *acc,
               uint32_t batch_size, unsigned threads = 1) const;
    // int32 plans: result = acc / scale per column.
    void finish_int32(const int64_t *acc, uint32_t batch_size, float *result, unsigned threads = 1) const;
    // Zeroes result ([B, W] float32) and acc (when not null), in parallel.
    void clear(float *result, int64_t *acc, uint32_t batch_size, unsigned threads = 1) const;
    // Threads worth using for host work on a batch of this size (1 for small batches).
    unsigned threads_for(uint64_t work) const;
    // Worker threads for pack/merge (0 = std::thread::hardware_concurrency(), capped at 4).
    void set_threads(unsigned n) { threads_ = n; }

  private:
    struct DpuState {
        std::vector<updlrm_bag> bags;
        std::vector<uint32_t> ids, sample;
        uint64_t out_bytes = 0;
        uint64_t elements = 0;
        // Empty for the next launch (capacity kept, so batches reuse their buffers).
        void reset() {
            bags.clear();
            ids.clear();
            sample.clear();
            out_bytes = 0;
            elements = 0;
        }
    };
    bool fits();
    void commit(uint32_t a, uint32_t e, uint32_t sample);
    void finalize(std::vector<Launch> &out);
    bool launch_empty() const { return nr_bags_ == 0; }
    void count_range(uint32_t a, uint32_t e);
    // direct_ plans (one replica of one shard per group): checks the groups, notes each lookup's
    // shard in rep_ and its DPU load, and when the batch fits one launch writes bag descriptors and
    // ids straight into the padded request buffer (done = true), both passes over two bag ranges
    // in parallel when worthwhile. Same bags in the same order as place(). done = false: the
    // general path goes on with rep_ and load_ set.
    std::string pack_direct(const int64_t *offsets, uint32_t batch_size, std::vector<Launch> &out, bool &done);
    std::string place(uint32_t a, uint32_t e, uint32_t sample, uint32_t table, std::vector<Launch> &out, int depth);

    PlanSpec spec_;
    // Per batch state.
    const uint32_t *lrow_ = nullptr;
    std::vector<uint32_t> rep_;        // chosen replica per lookup (its shard when one_shard_per_replica_)
    std::vector<uint64_t> load_;       // lookups assigned per DPU in this batch
    std::vector<DpuState> dpus_;       // current launch
    uint64_t nr_bags_ = 0;
    std::vector<uint32_t> cnt_, first_;   // per shard scratch: entries and first id slot in this bag
    std::vector<uint32_t *> cursor_;       // per shard: next id slot while committing
    bool one_shard_per_replica_ = true;    // then rep_[i] holds the shard id, not the replica
    bool direct_ = true;                   // + one replica per group: shard = group_shard_[grp[i]]
    std::vector<uint32_t> group_shard_;    // per group (direct_ only)
    const int32_t *grp_ = nullptr;
    std::vector<uint32_t> touched_shards_, touched_dpus_;
    std::vector<uint64_t> new_bags_, new_ids_, new_out_;  // per DPU scratch (zero between calls)
    PackCounters *counters_ = nullptr;
    std::vector<uint64_t> dpu_shard_base_;     // [D+1] prefix sums of nr_shards_on_dpu
    std::vector<uint32_t> local_to_global_;    // descriptor (dpu, local) -> global shard id
    std::vector<uint64_t> max_row_bytes_;  // per DPU: widest stored row of its shards
    bool always_fits_ = false;
    unsigned threads_ = 0;
    size_t nr_out_ = 0;  // launches filled in this pack()             // this batch fits one launch even at one bag per entry
};

}  // namespace updlrm
