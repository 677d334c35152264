// packer.h - the request packer and result merger of the PIM backend (native, no Python, no libdpu).
//
// pack() turns one batch - indices int64 [N] (row ids local to each table, table-major) and
// offsets int64 [T*B+1] - into per-DPU kernel requests, in two passes over the lookups, each
// split over the machine's cores by sample ranges:
//
//   pass A  every lookup -> (group, local row) through the PlanIndex; per bag, its lookups are
//           grouped into *units* (bag, group); a unit of a single-replica group is counted on
//           its DPUs at once, a unit of a replicated (cache) group is set aside;
//   choice  the replicated units, group by group in group order and bag by bag inside a group,
//           go to replicas by water-filling: the group's lookups are spread over its replicas so
//           that the replicas' busiest column-slice DPUs rise to a common level above the base
//           load, and each unit takes the replica whose share holds the unit's midpoint. A
//           bag's lookups of one group therefore meet on one replica: one partial sum each;
//   pass B  bag descriptors and local rows are written straight into each DPU's slice of the
//           padded request buffer, and one merge record (DPU, output offset, shard) per partial
//           sum is kept for the merger.
//
// partition/routing.py's Router(order="bag_fill") is this rule's numpy twin (tested for exact
// per-DPU equality against the emulator's counters).
//
// A batch whose requests or partial sums exceed the plan's per-DPU capacities is cut into several
// launches, DPU by DPU between bags, a bag too large for one launch into pieces (their partial
// sums are added back before the merge), so the merger always sees one output per DPU.
//
// merge() writes every element of the [B, W] float32 result exactly once (W = sum of table
// dims; table t at columns [table_col(t), table_col(t) + dim_t)): per (sample, table) it adds the
// unit partial sums in a register-sized accumulator (int64 for integer dtypes, converted once:
// value = q / col_scale[column]) and stores the row; nothing is zeroed beforehand.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "plan_index.h"
#include "updlrm_abi.h"

namespace updlrm {

// A byte buffer that grows without zeroing: request padding is never read by the kernel and
// output is fully written by the pulls, so pages that are never touched never cost memory.
class Bytes {
  public:
    size_t size() const { return size_; }
    uint8_t *data() { return p_.get(); }
    const uint8_t *data() const { return p_.get(); }
    // n bytes, contents undefined (callers rewrite what they use): growing never copies, and
    // grows by half again so that batches of slowly rising size do not reallocate each time.
    void resize(size_t n) {
        if (n > cap_) {
            const size_t cap = std::max(n, cap_ + cap_ / 2);
            p_.reset();  // the old buffer goes before the new one is mapped
            p_.reset(new uint8_t[cap]);
            cap_ = cap;
        }
        size_ = n;
    }

  private:
    std::unique_ptr<uint8_t[]> p_;
    size_t size_ = 0, cap_ = 0;
};

// Per launch and DPU, flattened [launch][dpu]: lookups (row reads), bags (partial sums),
// elements accumulated, request bytes and output bytes.
struct PackCounters {
    std::vector<uint64_t> lookups, bags, elements, request_bytes, output_bytes;
    void clear() {
        lookups.clear();
        bags.clear();
        elements.clear();
        request_bytes.clear();
        output_bytes.clear();
    }
};

// One launch's request: args and a [nr_dpus][request_stride] buffer, of which the first
// request_stride bytes per DPU are pushed; output_bytes is the largest output (the pull length).
struct Launch {
    std::vector<updlrm_launch_args> args;
    Bytes request;  // padding past each DPU's request is left as it is (never read)
    size_t request_stride = 0;
    size_t output_bytes = 0;
    // Multi-launch batches only: where each partial sum of this launch belongs in the batch's
    // output (per DPU, in bag order): byte offset there and whether it starts (copy) or continues
    // (add) a bag cut into pieces.
    struct Piece {
        uint32_t out_offset, bytes;
        bool first;
    };
    std::vector<std::vector<Piece>> pieces;
};

// Everything one batch needs from pack to merge. Reused between batches (buffers keep their
// capacity); independent of every other BatchPlan, so several batches can be in flight.
struct BatchPlan {
    enum ErrorKind { OK = 0, INPUT = 1, PLAN = 2 };
    ErrorKind error_kind = OK;
    std::string error;
    uint32_t batch_size = 0;
    uint64_t nr_lookups = 0;
    std::vector<Launch> launches;
    size_t nr_launches = 0;
    PackCounters counters;
    // Seconds of the packer's steps (wall clock): map + count, replica choice, request writes.
    double pass_a_s = 0, choose_s = 0, pass_b_s = 0;
    // Output of the whole batch: [nr_dpus][output_stride] partial sums at the offsets of the merge
    // records (filled by the driver's pulls; reassembled from pieces when there were several launches).
    Bytes output;
    size_t output_stride = 0;
    Bytes launch_output;  // one launch's pull (multi-launch batches)

    // ---- internal -------------------------------------------------------------------------
    struct CacheUnit {
        uint32_t group, count, rep;
    };
    struct UnitRec {
        uint32_t dpu, out_offset, shard;
    };
    // Per DPU and part: bags, ids, output bytes, elements (one cache line for the four).
    struct DpuCount {
        uint64_t nb, ni, ob, el;
    };
    // Per DPU and part: writes gathered into whole cache lines before they go to the DPU's
    // slice of the request (software write-combining: thousands of DPUs' slices are far apart).
    struct Stage {
        updlrm_bag bag[4];
        uint32_t id[16];
    };
    struct BagUnit {
        uint32_t group, count;
    };
    struct Part {
        uint32_t b0 = 0, b1 = 0;
        // Pass A's output, read by pass B in the same order (table by table, bag by bag): bag
        // (b, t)'s units start at units[bag_units[k]] (k = (b - b0) * T + t) and end where the
        // next bag in that order starts; the units' local rows follow one another in ids.
        std::vector<BagUnit> units;
        std::vector<uint32_t> bag_units, ids;
        uint32_t nr_units = 0;
        std::vector<uint32_t> slot;                // per group scratch: unit + 1 while a bag is grouped
        std::vector<uint32_t> bag_grp, bag_lrow;   // one bag's lookups: group, local row
        std::vector<uint32_t> uid, ustart;         // one bag's lookups: their unit; units: next id slot
        std::vector<BagUnit> bag_units_tmp;        // one bag's units in order of first appearance
        std::vector<DpuCount> dc;                  // per DPU, this part
        std::vector<Stage> stage;                  // per DPU (pass B)
        std::vector<uint8_t> stage_nb, stage_ni;   // per DPU: staged bags / ids
        std::vector<CacheUnit> cache;
        std::vector<UnitRec> recs;
        uint64_t nr_recs = 0;           // partial sums this part makes (sizes recs)
        std::vector<uint32_t> rec_ptr, rec_end;  // [(b1-b0)*T]: bag (b, t)'s records [rec_ptr, rec_end)
        uint64_t bad = UINT64_MAX;      // first bad lookup or bag (see bad_kind)
        int bad_kind = 0;               // 1 id out of range, 2 offsets decrease
    };
    std::vector<Part> parts;
    std::vector<DpuCount> tot;                    // per DPU totals
    Bytes full;                                   // multi-launch: all requests before cutting
    size_t full_stride = 0;
    std::vector<uint64_t> load;                   // per DPU entries (replica choice)
    std::vector<uint32_t> gcount, gfirst, gorder; // per cache group scratch
    std::vector<uint32_t> touched_groups;
    std::vector<std::pair<uint32_t, uint32_t>> unit_ref;  // (part, index) of cache units by group
};

class Packer {
  public:
    explicit Packer(std::shared_ptr<const PlanIndex> index) : ix_(std::move(index)) {}
    const PlanIndex &index() const { return *ix_; }
    std::shared_ptr<const PlanIndex> index_ptr() const { return ix_; }

    // Packs one batch into bp (see the file comment). Input errors (an id outside its table,
    // offsets that decrease or do not end at N) set bp.error_kind = INPUT, capacities that
    // cannot hold one lookup set PLAN; bp.error names what is wrong.
    void pack(const int64_t *indices, uint64_t nr_indices, const int64_t *offsets, uint32_t batch_size,
              BatchPlan &bp) const;
    // After the launches: reassembles launch l's pulled partial sums (multi-launch batches).
    void gather_launch(BatchPlan &bp, size_t l, const uint8_t *launch_output, size_t stride) const;
    // Writes the pooled result [B, W] float32 from bp.output (see the file comment).
    void merge(const BatchPlan &bp, float *result) const;

    // Threads worth using for host work of `work` lookups (UPDLRM_HOST_THREADS forces a count).
    unsigned threads_for(uint64_t work) const;
    void set_threads(unsigned n) { threads_ = n; }

  private:
    void pass_a(BatchPlan &bp, BatchPlan::Part &p, const int64_t *indices, const int64_t *offsets) const;
    void choose_replicas(BatchPlan &bp) const;
    void count_cache_units(BatchPlan::Part &p) const;
    void pass_b(BatchPlan &bp, BatchPlan::Part &p, uint8_t *req, size_t stride) const;
    void finish_args(BatchPlan &bp, Launch &L, const BatchPlan::DpuCount *dc) const;
    std::string cut_launches(BatchPlan &bp) const;

    std::shared_ptr<const PlanIndex> ix_;
    unsigned threads_ = 0;
};

// Splits ``count`` unit items over bins with current loads [R] so that the lowest bins rise to a
// common level; identical to handing the items one by one to the least-loaded bin, lowest index
// on ties (partition.routing.water_fill is its twin). take: [R] out.
void water_fill(const uint64_t *loads, uint32_t R, uint64_t count, uint64_t *take, std::vector<uint32_t> &scratch);

// Runs fn(0) .. fn(parts-1), fn(0) on the calling thread; where a thread cannot be started its
// part runs on the calling thread (never an exception or an abort).
void run_parts(unsigned parts, const std::function<void(unsigned)> &fn);

}  // namespace updlrm
