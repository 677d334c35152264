// packer.cpp - request packer and result merger (see packer.h for what they do).
#include "packer.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace updlrm {

namespace {
inline uint64_t align8(uint64_t x) { return (x + 7u) & ~uint64_t(7); }
inline uint64_t request_bytes(uint64_t nr_bags, uint64_t nr_ids) { return 16u * nr_bags + align8(4u * nr_ids); }
}  // namespace

Packer::Packer(PlanSpec spec) : spec_(std::move(spec)) {
    size_t nr_shards = spec_.shard_dpu.size();
    cnt_.assign(nr_shards, 0);
    cursor_.assign(nr_shards, nullptr);
    first_.assign(nr_shards, 0);
    one_shard_per_replica_ = true;
    for (size_t r = 0; r + 1 < spec_.rep_shard_ptr.size(); r++)
        if (spec_.rep_shard_ptr[r + 1] - spec_.rep_shard_ptr[r] != 1) one_shard_per_replica_ = false;
    direct_ = one_shard_per_replica_;
    size_t nr_groups = spec_.group_rep_ptr.empty() ? 0 : spec_.group_rep_ptr.size() - 1;
    group_shard_.assign(nr_groups, 0);
    for (size_t g = 0; g < nr_groups; g++) {
        if (spec_.group_rep_ptr[g + 1] - spec_.group_rep_ptr[g] != 1) direct_ = false;
        else if (one_shard_per_replica_) group_shard_[g] = spec_.rep_shards[spec_.rep_shard_ptr[spec_.group_rep_ptr[g]]];
    }
    new_bags_.assign(spec_.nr_dpus, 0);
    new_ids_.assign(spec_.nr_dpus, 0);
    new_out_.assign(spec_.nr_dpus, 0);
    dpus_.resize(spec_.nr_dpus);
    dpu_shard_base_.assign(spec_.nr_dpus + 1, 0);
    for (uint32_t d = 0; d < spec_.nr_dpus; d++) dpu_shard_base_[d + 1] = dpu_shard_base_[d] + spec_.nr_shards_on_dpu[d];
    local_to_global_.assign(dpu_shard_base_[spec_.nr_dpus], 0);
    for (size_t s = 0; s < nr_shards; s++) local_to_global_[dpu_shard_base_[spec_.shard_dpu[s]] + spec_.shard_local[s]] = uint32_t(s);
    max_row_bytes_.assign(spec_.nr_dpus, 0);
    for (size_t s = 0; s < nr_shards; s++)
        max_row_bytes_[spec_.shard_dpu[s]] = std::max(max_row_bytes_[spec_.shard_dpu[s]], uint64_t(spec_.shard_row_bytes[s]));
}

// Counts, for lookups [a, e), the entries per shard of their chosen replicas.
void Packer::count_range(uint32_t a, uint32_t e) {
    touched_shards_.clear();
    if (direct_) {  // one replica of one shard per group: the shard follows from the group
        for (uint32_t i = a; i < e; i++) {
            uint32_t s = group_shard_[grp_[i]];
            if (cnt_[s]++ == 0) touched_shards_.push_back(s);
        }
        return;
    }
    if (one_shard_per_replica_) {  // rep_[i] is the shard itself
        for (uint32_t i = a; i < e; i++) {
            uint32_t s = rep_[i];
            if (cnt_[s]++ == 0) touched_shards_.push_back(s);
        }
        return;
    }
    for (uint32_t i = a; i < e; i++) {
        uint32_t r = rep_[i];
        for (uint32_t k = spec_.rep_shard_ptr[r]; k < spec_.rep_shard_ptr[r + 1]; k++) {
            uint32_t s = spec_.rep_shards[k];
            if (cnt_[s]++ == 0) touched_shards_.push_back(s);
        }
    }
}

// Whether lookups [a, e) (counted by count_range) fit in the current launch on every DPU.
bool Packer::fits() {
    touched_dpus_.clear();
    for (uint32_t s : touched_shards_) {
        uint32_t d = spec_.shard_dpu[s];
        if (new_bags_[d] == 0) touched_dpus_.push_back(d);
        new_bags_[d] += 1;
        new_ids_[d] += cnt_[s];
        new_out_[d] += spec_.shard_row_bytes[s];
    }
    bool ok = true;
    for (uint32_t d : touched_dpus_) {
        const DpuState &st = dpus_[d];
        if (request_bytes(st.bags.size() + new_bags_[d], st.ids.size() + new_ids_[d]) > spec_.request_capacity ||
            st.out_bytes + new_out_[d] > spec_.output_capacity)
            ok = false;
        new_bags_[d] = new_ids_[d] = new_out_[d] = 0;
    }
    return ok;
}

// Appends lookups [a, e) of one sample as bags (one per touched shard) to the current launch.
void Packer::commit(uint32_t a, uint32_t e, uint32_t sample) {
    for (uint32_t s : touched_shards_) {
        uint32_t d = spec_.shard_dpu[s];
        DpuState &st = dpus_[d];
        updlrm_bag bag;
        bag.shard = spec_.shard_local[s];
        bag.nr_lookups = cnt_[s];
        bag.first_lookup = static_cast<uint32_t>(st.ids.size());
        bag.out_offset = static_cast<uint32_t>(st.out_bytes);
        first_[s] = bag.first_lookup;
        st.bags.push_back(bag);
        st.sample.push_back(sample);
        st.ids.resize(st.ids.size() + cnt_[s]);
        st.out_bytes += spec_.shard_row_bytes[s];
        st.elements += uint64_t(cnt_[s]) * spec_.shard_ncols[s];
        nr_bags_++;
    }
    for (uint32_t s : touched_shards_) {  // write cursors, valid once every ids vector has grown
        cursor_[s] = dpus_[spec_.shard_dpu[s]].ids.data() + first_[s];
    }
    if (direct_) {
        for (uint32_t i = a; i < e; i++) *cursor_[group_shard_[grp_[i]]]++ = lrow_[i];
    } else if (one_shard_per_replica_) {
        for (uint32_t i = a; i < e; i++) *cursor_[rep_[i]]++ = lrow_[i];
    } else {
        for (uint32_t i = a; i < e; i++) {
            uint32_t r = rep_[i];
            for (uint32_t k = spec_.rep_shard_ptr[r]; k < spec_.rep_shard_ptr[r + 1]; k++)
                *cursor_[spec_.rep_shards[k]]++ = lrow_[i];
        }
    }
    for (uint32_t s : touched_shards_) cnt_[s] = 0;
    touched_shards_.clear();
}

// Moves the current launch's per-DPU bags and ids into one padded request buffer.
void Packer::finalize(std::vector<Launch> &out) {
    uint32_t n = spec_.nr_dpus;
    if (nr_out_ == out.size()) out.emplace_back();
    Launch &L = out[nr_out_++];  // buffers reused from earlier batches (no page faults)
    L.args.resize(n);
    L.bag_sample.resize(n);
    L.bags.resize(n);
    size_t stride = 0, out_max = 0;
    for (uint32_t d = 0; d < n; d++) {
        stride = std::max<size_t>(stride, request_bytes(dpus_[d].bags.size(), dpus_[d].ids.size()));
        out_max = std::max<size_t>(out_max, dpus_[d].out_bytes);
    }
    L.request_stride = stride;
    L.output_bytes = out_max;
    if (L.request.size() < stride * n) L.request.resize(stride * n);
    for (uint32_t d = 0; d < n; d++) {
        DpuState &st = dpus_[d];
        uint8_t *dst = L.request.data() + size_t(d) * stride;
        size_t bag_bytes = 16u * st.bags.size();
        if (!st.bags.empty()) std::memcpy(dst, st.bags.data(), bag_bytes);
        if (!st.ids.empty()) std::memcpy(dst + bag_bytes, st.ids.data(), 4u * st.ids.size());
        size_t used = bag_bytes + 4u * st.ids.size();
        std::memset(dst + used, 0, stride - used);  // padding up to the largest request
        updlrm_launch_args &a = L.args[d];
        a.abi_version = UPDLRM_ABI_VERSION;
        a.nr_shards = spec_.nr_shards_on_dpu[d];
        a.nr_bags = static_cast<uint32_t>(st.bags.size());
        a.nr_lookups = static_cast<uint32_t>(st.ids.size());
        a.bags_offset = spec_.request_offset;
        a.lookups_offset = spec_.request_offset + static_cast<uint32_t>(bag_bytes);
        a.out_offset = spec_.output_offset;
        a.out_bytes = static_cast<uint32_t>(st.out_bytes);
        if (counters_ != nullptr) {
            counters_->lookups.push_back(st.ids.size());
            counters_->bags.push_back(st.bags.size());
            counters_->elements.push_back(st.elements);
            counters_->request_bytes.push_back(request_bytes(st.bags.size(), st.ids.size()));
            counters_->output_bytes.push_back(st.out_bytes);
        }
        L.bag_sample[d].swap(st.sample);
        L.bags[d].swap(st.bags);
        st.bags.clear();
        st.ids.clear();
        st.sample.clear();
        st.out_bytes = 0;
        st.elements = 0;
    }
    nr_bags_ = 0;
}

// Places lookups [a, e) of one bag: in the current launch if they fit, else in a new launch, else
// (a bag too large for one launch) split in halves.
std::string Packer::place(uint32_t a, uint32_t e, uint32_t sample, uint32_t table, std::vector<Launch> &out,
                          int depth) {
    count_range(a, e);
    if (always_fits_ || fits()) {
        commit(a, e, sample);
        return "";
    }
    if (!launch_empty()) {
        finalize(out);
        if (fits()) {
            commit(a, e, sample);
            return "";
        }
    }
    for (uint32_t s : touched_shards_) cnt_[s] = 0;
    touched_shards_.clear();
    if (e - a <= 1)
        return "one lookup of table " + std::to_string(table) + " (sample " + std::to_string(sample) +
               ") does not fit the plan's per-DPU request_bytes=" + std::to_string(spec_.request_capacity) +
               " / output_bytes=" + std::to_string(spec_.output_capacity) + "; make them larger";
    uint32_t mid = a + (e - a) / 2;
    std::string err = place(a, mid, sample, table, out, depth + 1);
    if (!err.empty()) return err;
    return place(mid, e, sample, table, out, depth + 1);
}

std::string Packer::pack(const int32_t *grp, const uint32_t *lrow, const int64_t *offsets, uint32_t batch_size,
                         std::vector<Launch> &out, size_t &nr_launches, PackCounters &counters) {
    nr_out_ = 0;
    nr_launches = 0;
    const uint32_t n = spec_.nr_dpus;
    const uint64_t nr_bags_total = uint64_t(spec_.nr_tables) * batch_size;
    const uint64_t nr_lookups = static_cast<uint64_t>(offsets[nr_bags_total]);
    const uint32_t nr_groups = static_cast<uint32_t>(spec_.group_rep_ptr.size() - 1);
    counters = PackCounters();
    counters_ = &counters;
    lrow_ = lrow;
    if (!direct_) rep_.resize(nr_lookups);
    load_.assign(n, 0);
    for (auto &st : dpus_) {
        st.bags.clear();
        st.ids.clear();
        st.sample.clear();
        st.out_bytes = 0;
        st.elements = 0;
    }
    nr_bags_ = 0;

    grp_ = grp;
    if (direct_) {  // nothing to choose: check the groups and count entries per DPU
        for (uint64_t i = 0; i < nr_lookups; i++) {
            int32_t g = grp[i];
            if (g < 0 || static_cast<uint32_t>(g) >= nr_groups)
                return "lookup " + std::to_string(i) + " maps to row group " + std::to_string(g) + ", allowed 0.." +
                       std::to_string(nr_groups - 1);
            load_[spec_.shard_dpu[group_shard_[g]]]++;
        }
    }
    // Replica choice, in lookup order: least-loaded (by lookups so far) DPU among the replicas.
    for (uint64_t i = 0; i < (direct_ ? 0 : nr_lookups); i++) {
        int32_t g = grp[i];
        if (g < 0 || static_cast<uint32_t>(g) >= nr_groups)
            return "lookup " + std::to_string(i) + " maps to row group " + std::to_string(g) + ", allowed 0.." +
                   std::to_string(nr_groups - 1);
        uint32_t r0 = spec_.group_rep_ptr[g], r1 = spec_.group_rep_ptr[g + 1];
        uint32_t best = r0;
        if (r1 - r0 > 1) {
            uint64_t best_load = UINT64_MAX;
            for (uint32_t r = r0; r < r1; r++) {
                uint64_t l = 0;  // the busiest DPU of the replica's column slices
                for (uint32_t k = spec_.rep_shard_ptr[r]; k < spec_.rep_shard_ptr[r + 1]; k++)
                    l = std::max(l, load_[spec_.shard_dpu[spec_.rep_shards[k]]]);
                if (l < best_load) {
                    best_load = l;
                    best = r;
                }
            }
        }
        rep_[i] = one_shard_per_replica_ ? spec_.rep_shards[spec_.rep_shard_ptr[best]] : best;
        for (uint32_t k = spec_.rep_shard_ptr[best]; k < spec_.rep_shard_ptr[best + 1]; k++)
            load_[spec_.shard_dpu[spec_.rep_shards[k]]]++;
    }

    // When even one bag per entry fits every DPU's capacities, the whole batch is one launch and
    // the per-bag capacity checks are skipped.
    always_fits_ = true;
    for (uint32_t d = 0; d < n; d++) {
        uint64_t e = load_[d];
        if (request_bytes(e, e) > spec_.request_capacity || e * max_row_bytes_[d] > spec_.output_capacity)
            always_fits_ = false;
        dpus_[d].bags.reserve(e);
        dpus_[d].ids.reserve(e);
        dpus_[d].sample.reserve(e);
    }

    // Bags, table-major: bag k is sample k % B of table k / B.
    for (uint64_t k = 0; k < nr_bags_total; k++) {
        uint32_t a = static_cast<uint32_t>(offsets[k]), e = static_cast<uint32_t>(offsets[k + 1]);
        if (a == e) continue;
        std::string err = place(a, e, static_cast<uint32_t>(k % batch_size), static_cast<uint32_t>(k / batch_size),
                                out, 0);
        if (!err.empty()) {
            counters_ = nullptr;
            return err;
        }
    }
    if (!launch_empty()) finalize(out);
    counters_ = nullptr;
    nr_launches = nr_out_;
    return "";
}

void Packer::merge(const Launch &launch, const uint8_t *output, size_t output_stride, float *result,
                   int64_t *acc) const {
    const uint32_t W = spec_.width;
    for (uint32_t d = 0; d < spec_.nr_dpus; d++) {
        const uint8_t *base = output + size_t(d) * output_stride;
        const std::vector<uint32_t> &samples = launch.bag_sample[d];
        const std::vector<updlrm_bag> &bags = launch.bags[d];
        const uint32_t *l2g = local_to_global_.data() + dpu_shard_base_[d];
        for (size_t j = 0; j < samples.size(); j++) {
            uint32_t s = l2g[bags[j].shard];
            uint32_t ncols = spec_.shard_ncols[s];
            size_t dst = size_t(samples[j]) * W + spec_.shard_col[s];
            const uint8_t *src = base + bags[j].out_offset;
            if (spec_.dtype == UPDLRM_DTYPE_INT32) {
                int64_t *o = acc + dst;
                const int32_t *p = reinterpret_cast<const int32_t *>(src);
                for (uint32_t c = 0; c < ncols; c++) o[c] += p[c];
            } else {
                float *o = result + dst;
                const float *p = reinterpret_cast<const float *>(src);
                for (uint32_t c = 0; c < ncols; c++) o[c] += p[c];
            }
        }
    }
}

void Packer::finish_int32(const int64_t *acc, uint32_t batch_size, float *result) const {
    const uint32_t W = spec_.width;
    for (uint32_t b = 0; b < batch_size; b++)
        for (uint32_t c = 0; c < W; c++)
            result[size_t(b) * W + c] = static_cast<float>(static_cast<double>(acc[size_t(b) * W + c]) / spec_.col_scale[c]);
}

}  // namespace updlrm
