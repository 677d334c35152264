// plan_index.h - the immutable, cache-resident index of one plan that the packer maps lookups with.
//
// A lookup of row r of table t goes to the cache group holding r when there is one, else to the
// base group holding r (the rule of partition/routing.py). The index answers that, plus the local
// row, in a few loads:
//
//   hot rows     one open-addressing table of (t, r) -> (cache group, local row) for every cached
//                row, behind a bit filter (16 bits per hot row) that turns away most cold rows
//                before they touch the table;
//   base ranges  per table: one group (an offset), or the sorted range starts plus a bucket array
//                (bucket width <= the narrowest range, so one compare after the bucket, a short
//                binary search when the bucket count had to be capped);
//   row sets     a dense [rows] map per table - the one case sized by table rows, not by shards;
//                only hand-made or loaded plans have base groups that are row sets.
//
// Per shard / group / replica it keeps the flat arrays the packer and merger need. Nothing here
// changes after construction, so one index serves any number of batches in flight.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "updlrm_abi.h"

namespace updlrm {

// Plan description in flat arrays, as updlrm/pim/layout.py builds it.
struct PlanSpec {
    uint32_t nr_dpus = 0;
    uint32_t dtype = UPDLRM_DTYPE_FP32;
    // Tables [T].
    std::vector<uint64_t> table_rows;
    std::vector<uint32_t> table_dim;
    // Shards [S].
    std::vector<uint32_t> shard_dpu, shard_local, shard_col, shard_ncols, shard_row_bytes, shard_table;
    // Groups [G]: table, kind (0 = base range, 1 = base row set, 2 = cache row set), range
    // [lo, hi) for ranges, rows[rows_ptr[g] .. rows_ptr[g+1]) for row sets (local row i = i-th).
    std::vector<uint32_t> group_table, group_kind;
    std::vector<int64_t> group_lo, group_hi;
    std::vector<uint64_t> group_rows_ptr;
    std::vector<int64_t> group_rows;
    // Group g's replicas are [group_rep_ptr[g], group_rep_ptr[g+1]); replica r's column-slice
    // shards are rep_shards[rep_shard_ptr[r] .. rep_shard_ptr[r+1]).
    std::vector<uint32_t> group_rep_ptr, rep_shard_ptr, rep_shards;
    std::vector<uint32_t> nr_shards_on_dpu;  // [D] descriptors written to each DPU
    std::vector<double> col_scale;           // [W] integer dtypes: value = q / col_scale[column]
    // MRAM layout, bytes from the heap (same on every DPU).
    uint32_t request_offset = 0, request_capacity = 0, output_offset = 0, output_capacity = 0;
};

enum GroupKind : uint32_t { GROUP_RANGE = 0, GROUP_SET = 1, GROUP_CACHE = 2 };

// What the packer reads per unit, one small record each (one cache line touched, not five arrays).
struct ShardInfo {
    uint32_t dpu, col, row_bytes;  // DPU, first result column, bytes per stored row
    uint16_t local, ncols;         // descriptor index on its DPU (< UPDLRM_MAX_SHARDS), columns
};
struct GroupInfo {
    uint32_t rep0;      // first replica (index into rep_shard_ptr)
    uint32_t nr_reps;   // 1: a base group (or a cache group with one replica)
    uint32_t shard0;    // replica 0's first column-slice shard
    uint32_t nslices0;  // replica 0's column slices
};

class PlanIndex {
  public:
    // Checks the spec (throws std::invalid_argument naming the inconsistent field).
    explicit PlanIndex(PlanSpec spec);
    const PlanSpec &spec() const { return s_; }

    uint32_t nr_tables() const { return static_cast<uint32_t>(s_.table_rows.size()); }
    uint32_t nr_groups() const { return static_cast<uint32_t>(s_.group_table.size()); }
    uint32_t nr_dpus() const { return s_.nr_dpus; }
    uint32_t width() const { return width_; }
    uint32_t table_col(uint32_t t) const { return table_col_[t]; }
    uint32_t max_dim() const { return max_dim_; }
    bool integer_dtype() const { return s_.dtype != UPDLRM_DTYPE_FP32; }
    // Single-replica group: its shards are its only replica's.
    bool single(uint32_t g) const { return groups_[g].nr_reps == 1; }
    const GroupInfo &group(uint32_t g) const { return groups_[g]; }
    const ShardInfo &shard(uint32_t s) const { return shards_[s]; }
    // Descriptor (dpu, local) -> global shard id.
    uint32_t shard_of(uint32_t dpu, uint32_t local) const { return local_to_global_[dpu_base_[dpu] + local]; }
    // Human-readable kind of the index, for reports ("ranges", "dense rows: ...").
    std::string describe() const;
    // Host bytes the lookup structures take (hot table, filter, buckets, dense maps).
    uint64_t index_bytes() const;

    // Row r of table t (both already range-checked) -> group and local row.
    __attribute__((always_inline)) inline void map(uint32_t t, int64_t r, uint32_t &g, uint32_t &l) const {
        const TableMap &m = maps_[t];
        if (m.hot) {
            const uint64_t key = (uint64_t(t) << 40) | uint64_t(r);
            const uint64_t h = key * 0x9E3779B97F4A7C15ull;  // multiply-shift: top bits are the hash
            const uint64_t fb = h >> filter_shift_;
            if ((filter_[fb >> 6] >> (fb & 63)) & 1u) {
                for (uint64_t p = (h >> table_shift_) & table_mask_;; p = (p + 1) & table_mask_) {
                    const HotEntry &e = hot_[p];
                    if (e.key == key) {
                        g = e.group;
                        l = e.local;
                        return;
                    }
                    if (e.key == EMPTY) break;
                }
            }
        }
        if (m.kind == MAP_ONE) {
            g = m.one_group;
            l = static_cast<uint32_t>(r - m.one_lo);
        } else if (m.kind == MAP_RANGES) {
            const uint64_t b = uint64_t(r) >> m.shift;
            uint32_t lo = m.bucket_first[b], hi = m.bucket_first[b + 1];
            while (lo < hi) {  // one compare when buckets are narrower than every range
                const uint32_t mid = (lo + hi + 1) >> 1;
                if (m.starts[mid] <= r) lo = mid;
                else hi = mid - 1;
            }
            g = m.gids[lo];
            l = static_cast<uint32_t>(r - m.starts[lo]);
        } else {
            g = static_cast<uint32_t>(m.dense_group[r]);
            l = m.dense_local[r];
        }
    }

  private:
    static constexpr uint64_t EMPTY = ~uint64_t(0);
    static inline uint64_t hash(uint64_t key) { return key * 0x9E3779B97F4A7C15ull; }
    struct HotEntry {
        uint64_t key;
        uint32_t group, local;
    };
    enum MapKind : uint32_t { MAP_ONE, MAP_RANGES, MAP_DENSE };
    struct TableMap {
        MapKind kind = MAP_ONE;
        bool hot = false;  // the table has cached rows
        uint32_t one_group = 0;
        int64_t one_lo = 0;
        uint32_t shift = 0, nr_ranges = 0;
        std::vector<uint32_t> bucket_first;  // [buckets + 1]
        std::vector<int64_t> starts;          // [nr_ranges]
        std::vector<uint32_t> gids;           // [nr_ranges]
        std::vector<int32_t> dense_group;     // [rows]
        std::vector<uint32_t> dense_local;    // [rows]
    };
    void check() const;
    void build_tables();
    void build_hot();

    PlanSpec s_;
    std::vector<GroupInfo> groups_;
    std::vector<ShardInfo> shards_;
    uint32_t width_ = 0, max_dim_ = 0;
    std::vector<uint32_t> table_col_;
    std::vector<TableMap> maps_;
    std::vector<HotEntry> hot_;
    std::vector<uint64_t> filter_;
    uint64_t table_mask_ = 0;
    unsigned filter_shift_ = 64, table_shift_ = 0;  // filter bit: h >> filter_shift_; slot: (h >> table_shift_) & mask
    std::vector<uint64_t> dpu_base_;          // [D+1] prefix sums of nr_shards_on_dpu
    std::vector<uint32_t> local_to_global_;   // descriptor (dpu, local) -> shard
};

}  // namespace updlrm
