// plan_index.cpp - building and checking the plan index (see plan_index.h).
#include "plan_index.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace updlrm {

namespace {
[[noreturn]] void bad(const std::string &what) { throw std::invalid_argument("plan spec: " + what); }

uint64_t pow2_at_least(uint64_t x) {
    uint64_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

// Bucket count cap per table: 2^20 buckets = 4 MiB at most, far less for typical plans.
constexpr uint64_t MAX_BUCKETS = uint64_t(1) << 20;
}  // namespace

PlanIndex::PlanIndex(PlanSpec spec) : s_(std::move(spec)) {
    check();
    const uint32_t T = nr_tables();
    table_col_.assign(T, 0);
    for (uint32_t t = 1; t < T; t++) table_col_[t] = table_col_[t - 1] + s_.table_dim[t - 1];
    width_ = T ? table_col_[T - 1] + s_.table_dim[T - 1] : 0;
    max_dim_ = T ? *std::max_element(s_.table_dim.begin(), s_.table_dim.end()) : 0;
    if (integer_dtype() && s_.col_scale.size() != width_) bad("col_scale must have one entry per result column");
    dpu_base_.assign(s_.nr_dpus + 1, 0);
    for (uint32_t d = 0; d < s_.nr_dpus; d++) dpu_base_[d + 1] = dpu_base_[d] + s_.nr_shards_on_dpu[d];
    local_to_global_.assign(dpu_base_[s_.nr_dpus], UINT32_MAX);
    for (size_t i = 0; i < s_.shard_dpu.size(); i++) {
        uint32_t d = s_.shard_dpu[i];
        if (s_.shard_local[i] >= s_.nr_shards_on_dpu[d]) bad("shard " + std::to_string(i) + " has a bad descriptor index");
        uint32_t &slot = local_to_global_[dpu_base_[d] + s_.shard_local[i]];
        if (slot != UINT32_MAX) bad("shard " + std::to_string(i) + " repeats a descriptor index");
        slot = static_cast<uint32_t>(i);
    }
    for (size_t i = 0; i < s_.shard_dpu.size(); i++) {
        if (s_.shard_local[i] >= 65536 || s_.shard_ncols[i] >= 65536) bad("shard " + std::to_string(i) + " has too many columns or descriptors");
        shards_.push_back(ShardInfo{s_.shard_dpu[i], s_.shard_col[i], s_.shard_row_bytes[i],
                                    static_cast<uint16_t>(s_.shard_local[i]), static_cast<uint16_t>(s_.shard_ncols[i])});
    }
    for (uint32_t g = 0; g < nr_groups(); g++) {
        const uint32_t r0 = s_.group_rep_ptr[g];
        groups_.push_back(GroupInfo{r0, s_.group_rep_ptr[g + 1] - r0, s_.rep_shards[s_.rep_shard_ptr[r0]],
                                    s_.rep_shard_ptr[r0 + 1] - s_.rep_shard_ptr[r0]});
    }
    build_tables();
    build_hot();
}

void PlanIndex::check() const {
    const size_t T = s_.table_rows.size(), S = s_.shard_dpu.size(), G = s_.group_table.size();
    if (s_.nr_dpus == 0) bad("nr_dpus must be >= 1");
    if (s_.table_dim.size() != T) bad("table_dim and table_rows differ in length");
    for (size_t t = 0; t < T; t++)
        if (s_.table_rows[t] >= (uint64_t(1) << 40)) bad("table " + std::to_string(t) + " has >= 2^40 rows");
    for (const auto *v : {&s_.shard_local, &s_.shard_col, &s_.shard_ncols, &s_.shard_row_bytes, &s_.shard_table})
        if (v->size() != S) bad("per-shard arrays differ in length");
    for (size_t i = 0; i < S; i++) {
        if (s_.shard_dpu[i] >= s_.nr_dpus) bad("shard " + std::to_string(i) + " on DPU " + std::to_string(s_.shard_dpu[i]) + " >= nr_dpus");
        if (s_.shard_table[i] >= T) bad("shard " + std::to_string(i) + " names table " + std::to_string(s_.shard_table[i]));
        uint32_t t = s_.shard_table[i];
        uint64_t c0 = 0;
        for (uint32_t u = 0; u < t; u++) c0 += s_.table_dim[u];
        if (s_.shard_col[i] < c0 || uint64_t(s_.shard_col[i]) + s_.shard_ncols[i] > c0 + s_.table_dim[t] || s_.shard_ncols[i] == 0)
            bad("shard " + std::to_string(i) + " columns fall outside its table");
        if (s_.shard_row_bytes[i] % 8 != 0 || s_.shard_row_bytes[i] == 0)
            bad("shard " + std::to_string(i) + " row bytes are not a positive multiple of 8");
    }
    if (s_.group_kind.size() != G || s_.group_lo.size() != G || s_.group_hi.size() != G || s_.group_rows_ptr.size() != G + 1)
        bad("per-group arrays differ in length");
    if (s_.group_rows_ptr.back() != s_.group_rows.size()) bad("group_rows_ptr does not end at len(group_rows)");
    for (size_t g = 0; g < G; g++) {
        if (s_.group_table[g] >= T) bad("group " + std::to_string(g) + " names table " + std::to_string(s_.group_table[g]));
        if (s_.group_kind[g] > GROUP_CACHE) bad("group " + std::to_string(g) + " has kind " + std::to_string(s_.group_kind[g]));
        uint64_t rows = s_.table_rows[s_.group_table[g]];
        if (s_.group_kind[g] == GROUP_RANGE) {
            if (s_.group_lo[g] < 0 || s_.group_lo[g] > s_.group_hi[g] || uint64_t(s_.group_hi[g]) > rows)
                bad("group " + std::to_string(g) + " range is outside its table");
        } else {
            for (uint64_t k = s_.group_rows_ptr[g]; k < s_.group_rows_ptr[g + 1]; k++) {
                int64_t r = s_.group_rows[k];
                if (r < 0 || uint64_t(r) >= rows)
                    bad("group " + std::to_string(g) + " holds row " + std::to_string(r) + ", outside its table");
            }
        }
    }
    if (s_.group_rep_ptr.size() != G + 1 || s_.rep_shard_ptr.empty() || s_.group_rep_ptr.back() + 1 != s_.rep_shard_ptr.size() ||
        s_.rep_shard_ptr.back() != s_.rep_shards.size())
        bad("inconsistent group/replica/shard pointers");
    for (size_t g = 0; g < G; g++)
        if (s_.group_rep_ptr[g + 1] <= s_.group_rep_ptr[g]) bad("group " + std::to_string(g) + " has no replica");
    for (size_t r = 0; r + 1 < s_.rep_shard_ptr.size(); r++)
        if (s_.rep_shard_ptr[r + 1] <= s_.rep_shard_ptr[r]) bad("replica " + std::to_string(r) + " has no shard");
    for (uint32_t x : s_.rep_shards)
        if (x >= S) bad("replica names shard " + std::to_string(x));
    if (s_.nr_shards_on_dpu.size() != s_.nr_dpus) bad("nr_shards_on_dpu length");
    uint64_t total = 0;
    for (uint32_t c : s_.nr_shards_on_dpu) total += c;
    if (total != S) bad("nr_shards_on_dpu does not sum to the shard count");
}

void PlanIndex::build_tables() {
    const uint32_t T = nr_tables(), G = nr_groups();
    std::vector<std::vector<uint32_t>> base(T);
    for (uint32_t g = 0; g < G; g++)
        if (s_.group_kind[g] != GROUP_CACHE) base[s_.group_table[g]].push_back(g);
    maps_.assign(T, TableMap());
    for (uint32_t t = 0; t < T; t++) {
        TableMap &m = maps_[t];
        const uint64_t rows = s_.table_rows[t];
        bool sets = false;
        for (uint32_t g : base[t]) sets |= s_.group_kind[g] == GROUP_SET;
        if (sets) {  // the dense map: every row's group and local row
            m.kind = MAP_DENSE;
            m.dense_group.assign(rows, -1);
            m.dense_local.assign(rows, 0);
            for (uint32_t g : base[t]) {
                if (s_.group_kind[g] == GROUP_SET) {
                    for (uint64_t k = s_.group_rows_ptr[g]; k < s_.group_rows_ptr[g + 1]; k++) {
                        int64_t r = s_.group_rows[k];
                        if (m.dense_group[r] >= 0) bad("row " + std::to_string(r) + " of table " + std::to_string(t) + " is in two base groups");
                        m.dense_group[r] = static_cast<int32_t>(g);
                        m.dense_local[r] = static_cast<uint32_t>(k - s_.group_rows_ptr[g]);
                    }
                } else {
                    for (int64_t r = s_.group_lo[g]; r < s_.group_hi[g]; r++) {
                        if (m.dense_group[r] >= 0) bad("row " + std::to_string(r) + " of table " + std::to_string(t) + " is in two base groups");
                        m.dense_group[r] = static_cast<int32_t>(g);
                        m.dense_local[r] = static_cast<uint32_t>(r - s_.group_lo[g]);
                    }
                }
            }
            for (uint64_t r = 0; r < rows; r++)
                if (m.dense_group[r] < 0) bad("row " + std::to_string(r) + " of table " + std::to_string(t) + " is in no base group");
            continue;
        }
        // Row ranges: sorted by start, tiling [0, rows) with no gap or overlap.
        std::vector<uint32_t> gs = base[t];
        std::sort(gs.begin(), gs.end(), [&](uint32_t a, uint32_t b) { return s_.group_lo[a] < s_.group_lo[b]; });
        int64_t expect = 0;
        std::vector<uint32_t> kept;
        for (uint32_t g : gs) {
            if (s_.group_lo[g] != expect) bad("table " + std::to_string(t) + ": base ranges do not tile its rows at row " + std::to_string(expect));
            if (s_.group_hi[g] > s_.group_lo[g]) kept.push_back(g);  // empty ranges hold no row
            expect = s_.group_hi[g];
        }
        if (uint64_t(expect) != rows) bad("table " + std::to_string(t) + ": base ranges end at row " + std::to_string(expect));
        if (kept.size() <= 1) {
            m.kind = MAP_ONE;
            m.one_group = kept.empty() ? (gs.empty() ? 0 : gs[0]) : kept[0];
            m.one_lo = kept.empty() ? 0 : s_.group_lo[kept[0]];
            continue;
        }
        m.kind = MAP_RANGES;
        m.nr_ranges = static_cast<uint32_t>(kept.size());
        int64_t narrow = INT64_MAX;
        for (uint32_t g : kept) {
            m.starts.push_back(s_.group_lo[g]);
            m.gids.push_back(g);
            narrow = std::min(narrow, s_.group_hi[g] - s_.group_lo[g]);
        }
        uint32_t shift = 0;
        while ((int64_t(1) << (shift + 1)) <= narrow) shift++;
        // Buckets sized by the ranges, not the rows: at most 4 per range (>= 4,096), so the map
        // stays cache-resident; where that is coarser than the narrowest range, a bucket may
        // hold several ranges and map() binary-searches among them.
        const uint64_t max_buckets = std::min<uint64_t>(MAX_BUCKETS, std::max<uint64_t>(4096, 4 * uint64_t(m.nr_ranges)));
        while (((rows - 1) >> shift) + 1 > max_buckets) shift++;
        m.shift = shift;
        uint64_t nb = ((rows - 1) >> shift) + 1;
        // bucket_first[b]: the range holding row b << shift; the range of any row of bucket b
        // lies in [bucket_first[b], bucket_first[b + 1]] (the last entry is the last range).
        m.bucket_first.assign(nb + 1, 0);
        uint32_t pos = 0;
        for (uint64_t b = 0; b < nb; b++) {
            int64_t r0 = int64_t(b << shift);
            while (pos + 1 < m.nr_ranges && m.starts[pos + 1] <= r0) pos++;
            m.bucket_first[b] = pos;
        }
        m.bucket_first[nb] = m.nr_ranges - 1;
    }
}

void PlanIndex::build_hot() {
    const uint32_t G = nr_groups();
    uint64_t nr_hot = 0;
    for (uint32_t g = 0; g < G; g++) {
        if (s_.group_kind[g] != GROUP_CACHE) continue;
        nr_hot += s_.group_rows_ptr[g + 1] - s_.group_rows_ptr[g];
        maps_[s_.group_table[g]].hot = true;
    }
    if (nr_hot == 0) return;
    const uint64_t slots = pow2_at_least(2 * nr_hot);
    const uint64_t fbits = pow2_at_least(std::max<uint64_t>(16 * nr_hot, 4096));
    unsigned tl = 0, fl = 0;
    while ((uint64_t(1) << tl) < slots) tl++;
    while ((uint64_t(1) << fl) < fbits) fl++;
    hot_.assign(slots, HotEntry{EMPTY, 0, 0});
    table_mask_ = slots - 1;
    filter_.assign(fbits / 64, 0);
    filter_shift_ = 64 - fl;                       // the top fl bits pick the filter bit
    table_shift_ = fl + tl <= 64 ? 64 - fl - tl : 0;  // the next tl bits pick the slot
    // Groups in increasing id: a row held by two cache groups maps to the first (RowLocator's rule).
    for (uint32_t g = 0; g < G; g++) {
        if (s_.group_kind[g] != GROUP_CACHE) continue;
        const uint64_t t = s_.group_table[g];
        for (uint64_t k = s_.group_rows_ptr[g]; k < s_.group_rows_ptr[g + 1]; k++) {
            const uint64_t key = (t << 40) | uint64_t(s_.group_rows[k]);
            const uint64_t h = hash(key);
            uint64_t p = (h >> table_shift_) & table_mask_;
            while (hot_[p].key != EMPTY && hot_[p].key != key) p = (p + 1) & table_mask_;
            if (hot_[p].key == key) continue;
            hot_[p] = HotEntry{key, g, static_cast<uint32_t>(k - s_.group_rows_ptr[g])};
            const uint64_t fb = h >> filter_shift_;
            filter_[fb >> 6] |= uint64_t(1) << (fb & 63);
        }
    }
}

uint64_t PlanIndex::index_bytes() const {
    uint64_t b = hot_.size() * sizeof(HotEntry) + filter_.size() * 8;
    for (const TableMap &m : maps_)
        b += m.bucket_first.size() * 4 + m.starts.size() * 8 + m.gids.size() * 4 + m.dense_group.size() * 4 +
             m.dense_local.size() * 4;
    return b;
}

std::string PlanIndex::describe() const {
    std::string dense;
    uint32_t ranges = 0, one = 0;
    for (uint32_t t = 0; t < nr_tables(); t++) {
        if (maps_[t].kind == MAP_DENSE) dense += (dense.empty() ? "" : ",") + std::to_string(t);
        else if (maps_[t].kind == MAP_RANGES) ranges++;
        else one++;
    }
    std::string s = std::to_string(one) + " single-group tables, " + std::to_string(ranges) + " range-mapped tables, " +
                    std::to_string(hot_.empty() ? 0 : std::count_if(hot_.begin(), hot_.end(), [](const HotEntry &e) { return e.key != EMPTY; })) +
                    " hot rows";
    if (!dense.empty()) s += "; dense per-row maps (base groups that are row sets) for tables " + dense;
    return s;
}

}  // namespace updlrm
