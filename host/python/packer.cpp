// packer.cpp - request packer and result merger (see packer.h for what they do).
#include "packer.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

namespace updlrm {

namespace {
inline uint64_t align8(uint64_t x) { return (x + 7u) & ~uint64_t(7); }
inline uint64_t request_bytes(uint64_t nr_bags, uint64_t nr_ids) { return 16u * nr_bags + align8(4u * nr_ids); }

// Runs fn(0) .. fn(parts-1), fn(0) on the calling thread and the others on new threads. Where a
// thread cannot be started its part runs on the calling thread (never an exception or an abort).
template <class F>
void run_parts(unsigned parts, F fn) {
    if (parts <= 1) {
        fn(0u);
        return;
    }
    std::vector<std::thread> ts;
    std::vector<unsigned> inline_parts;
    ts.reserve(parts - 1);
    for (unsigned p = 1; p < parts; p++) {
        try {
            ts.emplace_back(fn, p);
        } catch (...) {
            inline_parts.push_back(p);
        }
    }
    fn(0u);
    for (unsigned p : inline_parts) fn(p);
    for (auto &t : ts) t.join();
}

// Entries per shard of lookups [a, e) (shard of lookup i: sh_of[i]) into cnt, the shards in order
// of first appearance into touched. Runs of one shard are counted in a register.
inline void count_runs(const uint32_t *sh_of, uint32_t a, uint32_t e, uint32_t *cnt, std::vector<uint32_t> &touched) {
    for (uint32_t i = a; i < e;) {
        uint32_t sh = sh_of[i], j = i + 1;
        while (j < e && sh_of[j] == sh) j++;
        if (cnt[sh] == 0) touched.push_back(sh);
        cnt[sh] += j - i;
        i = j;
    }
}

// Sample range [b0, b1) of part p out of `parts` (B samples).
inline void part_range(uint32_t B, unsigned p, unsigned parts, uint32_t &b0, uint32_t &b1) {
    b0 = static_cast<uint32_t>(uint64_t(B) * p / parts);
    b1 = static_cast<uint32_t>(uint64_t(B) * (p + 1) / parts);
}
}  // namespace

unsigned Packer::threads_for(uint64_t work) const {
    // UPDLRM_HOST_THREADS=n forces n threads whatever the batch size (tests, experiments).
    const char *env = std::getenv("UPDLRM_HOST_THREADS");
    unsigned forced = env != nullptr ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : 0u;
    if (forced != 0) return std::min(forced, 16u);
    unsigned n = threads_ != 0 ? threads_ : std::thread::hardware_concurrency();
    if (n == 0) n = 1;
    n = std::min(n, 4u);
    // Starting a thread costs tens of microseconds: only worth it above ~100k elements per thread.
    while (n > 1 && work < uint64_t(n) * 100000u) n--;
    return n;
}

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
    if (one_shard_per_replica_) {  // (also direct_: rep_[i] = group_shard_[grp_[i]])  // rep_[i] is the shard itself
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
    if (one_shard_per_replica_) {
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
        st.reset();
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

std::string Packer::pack_direct(const int64_t *offsets, uint32_t batch_size, std::vector<Launch> &out, bool &done) {
    done = false;
    const uint32_t n = spec_.nr_dpus;
    const uint64_t K = uint64_t(spec_.nr_tables) * batch_size;
    const uint64_t N = static_cast<uint64_t>(offsets[K]);
    const size_t nr_shards = spec_.shard_dpu.size();
    const uint32_t nr_groups = static_cast<uint32_t>(spec_.group_rep_ptr.size() - 1);
    const unsigned parts = threads_for(N);
    // Part p handles bags [split[p], split[p+1]): about N / parts lookups each.
    std::vector<uint64_t> split(parts + 1, K);
    split[0] = 0;
    for (unsigned p = 1; p < parts; p++)
        split[p] = static_cast<uint64_t>(std::lower_bound(offsets, offsets + K, static_cast<int64_t>(N * p / parts)) - offsets);
    struct Scratch {
        std::vector<uint32_t> cnt, touched;
        std::vector<uint32_t *> cursor;
        std::vector<uint64_t> nb, ni, ob, el;  // per DPU: bags, ids, output bytes, elements of this part
        uint64_t bad = UINT64_MAX;             // first lookup with a group out of range
    };
    std::vector<Scratch> sc(parts);
    const int32_t *grp = grp_;
    const uint32_t *gs = group_shard_.data();
    uint32_t *sh_of = rep_.data();  // shard of each lookup, looked up once here
    const uint32_t *lrow = lrow_;
    // Pass 1 (parallel): check the groups, note each lookup's shard, count bags / ids / output
    // bytes per DPU.
    run_parts(parts, [&](unsigned p) {
        Scratch &x = sc[p];
        x.cnt.assign(nr_shards, 0);
        x.cursor.assign(nr_shards, nullptr);
        x.nb.assign(n, 0);
        x.ni.assign(n, 0);
        x.ob.assign(n, 0);
        x.el.assign(n, 0);
        // The lookups of this part, checked and mapped to shards in one streaming loop.
        const uint64_t i0 = static_cast<uint64_t>(offsets[split[p]]), i1 = static_cast<uint64_t>(offsets[split[p + 1]]);
        for (uint64_t i = i0; i < i1; i++) {
            uint32_t g = static_cast<uint32_t>(grp[i]);
            if (g >= nr_groups) {  // also a negative group
                x.bad = i;
                return;
            }
            sh_of[i] = gs[g];
        }
        uint32_t *cnt = x.cnt.data();
        for (uint64_t k = split[p]; k < split[p + 1]; k++) {
            uint32_t a = static_cast<uint32_t>(offsets[k]), e = static_cast<uint32_t>(offsets[k + 1]);
            count_runs(sh_of, a, e, cnt, x.touched);
            for (uint32_t sh : x.touched) {
                uint32_t d = spec_.shard_dpu[sh];
                x.nb[d] += 1;
                x.ni[d] += x.cnt[sh];
                x.ob[d] += spec_.shard_row_bytes[sh];
                x.el[d] += uint64_t(x.cnt[sh]) * spec_.shard_ncols[sh];
                x.cnt[sh] = 0;
            }
            x.touched.clear();
        }
    });
    for (unsigned p = 0; p < parts; p++)  // the first bad lookup of the batch, as in lookup order
        if (sc[p].bad != UINT64_MAX) {
            uint64_t i = sc[p].bad;
            return "lookup " + std::to_string(i) + " maps to row group " + std::to_string(grp[i]) + ", allowed 0.." +
                   std::to_string(nr_groups - 1);
        }
    // Totals per DPU; each part's counts become its starting positions (prefix over parts).
    std::vector<uint64_t> NB(n, 0), NI(n, 0), OB(n, 0), EL(n, 0);
    uint64_t total_bags = 0;
    for (unsigned p = 0; p < parts; p++) {
        Scratch &x = sc[p];
        for (uint32_t d = 0; d < n; d++) {
            uint64_t b = x.nb[d], i = x.ni[d], o = x.ob[d];
            x.nb[d] = NB[d];
            x.ni[d] = NI[d];
            x.ob[d] = OB[d];
            NB[d] += b;
            NI[d] += i;
            OB[d] += o;
            EL[d] += x.el[d];
            total_bags += b;
        }
    }
    // The lookups per DPU are the load the general path needs. The exact totals decide whether
    // the batch is one launch: when they fit every DPU's capacities, so does every prefix of the
    // bags, and the general path would build this same single launch bag by bag.
    bool one_launch = true;
    for (uint32_t d = 0; d < n; d++) {
        load_[d] = NI[d];
        if (request_bytes(NB[d], NI[d]) > spec_.request_capacity || OB[d] > spec_.output_capacity) one_launch = false;
    }
    if (!one_launch) return "";  // the general path places bag by bag
    done = true;
    if (total_bags == 0) return "";  // nothing to launch
    if (nr_out_ == out.size()) out.emplace_back();
    Launch &L = out[nr_out_++];
    L.args.resize(n);
    L.bag_sample.resize(n);
    L.bags.resize(n);
    size_t stride = 0, out_max = 0;
    for (uint32_t d = 0; d < n; d++) {
        stride = std::max<size_t>(stride, request_bytes(NB[d], NI[d]));
        out_max = std::max<size_t>(out_max, OB[d]);
        L.bags[d].resize(NB[d]);
        L.bag_sample[d].resize(NB[d]);
    }
    L.request_stride = stride;
    L.output_bytes = out_max;
    if (L.request.size() < stride * n) L.request.resize(stride * n);
    uint8_t *req = L.request.data();
    // Pass 2 (parallel): bag descriptors and ids straight into each DPU's slice of the buffer.
    run_parts(parts, [&](unsigned p) {
        Scratch &x = sc[p];
        for (uint64_t k = split[p]; k < split[p + 1]; k++) {
            uint32_t a = static_cast<uint32_t>(offsets[k]), e = static_cast<uint32_t>(offsets[k + 1]);
            if (a == e) continue;
            uint32_t sample = static_cast<uint32_t>(k % batch_size);
            count_runs(sh_of, a, e, x.cnt.data(), x.touched);
            for (uint32_t sh : x.touched) {
                uint32_t d = spec_.shard_dpu[sh];
                uint8_t *dst = req + size_t(d) * stride;
                updlrm_bag bag;
                bag.shard = spec_.shard_local[sh];
                bag.nr_lookups = x.cnt[sh];
                bag.first_lookup = static_cast<uint32_t>(x.ni[d]);
                bag.out_offset = static_cast<uint32_t>(x.ob[d]);
                uint64_t bi = x.nb[d]++;
                std::memcpy(dst + 16u * bi, &bag, sizeof bag);
                L.bags[d][bi] = bag;
                L.bag_sample[d][bi] = sample;
                x.cursor[sh] = reinterpret_cast<uint32_t *>(dst + 16u * NB[d]) + x.ni[d];
                x.ni[d] += x.cnt[sh];
                x.ob[d] += spec_.shard_row_bytes[sh];
            }
            for (uint32_t i = a; i < e;) {  // runs of one shard (a whole bag on table-wise plans) at once
                uint32_t sh = sh_of[i], j = i + 1;
                while (j < e && sh_of[j] == sh) j++;
                std::memcpy(x.cursor[sh], lrow + i, 4u * (j - i));
                x.cursor[sh] += j - i;
                i = j;
            }
            for (uint32_t sh : x.touched) x.cnt[sh] = 0;
            x.touched.clear();
        }
    });
    for (uint32_t d = 0; d < n; d++) {
        size_t used = 16u * NB[d] + 4u * NI[d];
        std::memset(req + size_t(d) * stride + used, 0, stride - used);  // padding up to the largest request
        updlrm_launch_args &a = L.args[d];
        a.abi_version = UPDLRM_ABI_VERSION;
        a.nr_shards = spec_.nr_shards_on_dpu[d];
        a.nr_bags = static_cast<uint32_t>(NB[d]);
        a.nr_lookups = static_cast<uint32_t>(NI[d]);
        a.bags_offset = spec_.request_offset;
        a.lookups_offset = spec_.request_offset + static_cast<uint32_t>(16u * NB[d]);
        a.out_offset = spec_.output_offset;
        a.out_bytes = static_cast<uint32_t>(OB[d]);
        if (counters_ != nullptr) {
            counters_->lookups.push_back(NI[d]);
            counters_->bags.push_back(NB[d]);
            counters_->elements.push_back(EL[d]);
            counters_->request_bytes.push_back(request_bytes(NB[d], NI[d]));
            counters_->output_bytes.push_back(OB[d]);
        }
    }
    return "";
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
    rep_.resize(nr_lookups);  // direct_: the shard of each lookup, looked up once (groups can be many)
    load_.assign(n, 0);
    for (auto &st : dpus_) st.reset();
    nr_bags_ = 0;

    grp_ = grp;
    if (direct_) {  // nothing to choose: check the groups, count entries per DPU, pack at once if it fits
        bool done = false;
        std::string err = pack_direct(offsets, batch_size, out, done);
        if (!err.empty() || done) {
            counters_ = nullptr;
            nr_launches = nr_out_;
            return err;
        }
    }
    // Replica choice in two passes. First every lookup of a group with a single replica (the
    // plan's base placement) is counted on its DPUs; then the lookups of replicated (cached)
    // groups, in lookup order, each go to the replica whose busiest DPU has the fewest lookups so
    // far. Seeing the whole base load first balances far better than choosing while that load is
    // still arriving table by table (Kaggle-shaped cache_aware plan, 64 DPUs: max/mean lookups per
    // DPU 1.13 -> ~1.04, the partitioner's Router(order="base_first") model).
    if (!direct_) {
        bool any_multi = false;
        for (uint64_t i = 0; i < nr_lookups; i++) {
            int32_t g = grp[i];
            if (g < 0 || static_cast<uint32_t>(g) >= nr_groups)
                return "lookup " + std::to_string(i) + " maps to row group " + std::to_string(g) + ", allowed 0.." +
                       std::to_string(nr_groups - 1);
            uint32_t r0 = spec_.group_rep_ptr[g], r1 = spec_.group_rep_ptr[g + 1];
            if (r1 - r0 > 1) {
                any_multi = true;
                continue;
            }
            rep_[i] = one_shard_per_replica_ ? spec_.rep_shards[spec_.rep_shard_ptr[r0]] : r0;
            for (uint32_t k = spec_.rep_shard_ptr[r0]; k < spec_.rep_shard_ptr[r0 + 1]; k++)
                load_[spec_.shard_dpu[spec_.rep_shards[k]]]++;
        }
        for (uint64_t i = 0; any_multi && i < nr_lookups; i++) {
            uint32_t g = static_cast<uint32_t>(grp[i]);
            uint32_t r0 = spec_.group_rep_ptr[g], r1 = spec_.group_rep_ptr[g + 1];
            if (r1 - r0 <= 1) continue;
            uint32_t best = r0;
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
            rep_[i] = one_shard_per_replica_ ? spec_.rep_shards[spec_.rep_shard_ptr[best]] : best;
            for (uint32_t k = spec_.rep_shard_ptr[best]; k < spec_.rep_shard_ptr[best + 1]; k++)
                load_[spec_.shard_dpu[spec_.rep_shards[k]]]++;
        }
    }

    // When even one bag per entry fits every DPU's capacities, the whole batch is one launch and
    // the per-bag capacity checks are skipped.
    always_fits_ = true;
    for (uint32_t d = 0; d < n; d++) {
        uint64_t e = load_[d];
        if (request_bytes(e, e) > spec_.request_capacity || e * max_row_bytes_[d] > spec_.output_capacity)
            always_fits_ = false;
    }
    for (uint32_t d = 0; d < n; d++) {
        uint64_t e = load_[d];
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
                   int64_t *acc, uint32_t batch_size, unsigned threads) const {
    const uint32_t W = spec_.width;
    const bool is_int = spec_.dtype != UPDLRM_DTYPE_FP32;  // int32 / int16 / int8: int32 partial sums
    const unsigned parts = std::max(1u, threads);
    run_parts(parts, [&](unsigned p) {
        uint32_t b0, b1;
        part_range(batch_size, p, parts, b0, b1);
        for (uint32_t d = 0; d < spec_.nr_dpus; d++) {
            const uint8_t *base = output + size_t(d) * output_stride;
            const std::vector<uint32_t> &samples = launch.bag_sample[d];
            const std::vector<updlrm_bag> &bags = launch.bags[d];
            const uint32_t *l2g = local_to_global_.data() + dpu_shard_base_[d];
            for (size_t j = 0; j < samples.size(); j++) {
                uint32_t b = samples[j];
                if (b < b0 || b >= b1) continue;  // another thread's samples
                uint32_t s = l2g[bags[j].shard];
                uint32_t ncols = spec_.shard_ncols[s];
                size_t dst = size_t(b) * W + spec_.shard_col[s];
                const uint8_t *src = base + bags[j].out_offset;
                if (is_int) {
                    int64_t *o = acc + dst;
                    const int32_t *q = reinterpret_cast<const int32_t *>(src);
                    for (uint32_t c = 0; c < ncols; c++) o[c] += q[c];
                } else {
                    float *o = result + dst;
                    const float *q = reinterpret_cast<const float *>(src);
                    for (uint32_t c = 0; c < ncols; c++) o[c] += q[c];
                }
            }
        }
    });
}

void Packer::finish_int32(const int64_t *acc, uint32_t batch_size, float *result, unsigned threads) const {
    const uint32_t W = spec_.width;
    const unsigned parts = std::max(1u, threads);
    run_parts(parts, [&](unsigned p) {
        uint32_t b0, b1;
        part_range(batch_size, p, parts, b0, b1);
        for (uint32_t b = b0; b < b1; b++)
            for (uint32_t c = 0; c < W; c++)
                result[size_t(b) * W + c] =
                    static_cast<float>(static_cast<double>(acc[size_t(b) * W + c]) / spec_.col_scale[c]);
    });
}

void Packer::clear(float *result, int64_t *acc, uint32_t batch_size, unsigned threads) const {
    const size_t W = spec_.width;
    const unsigned parts = std::max(1u, threads);
    run_parts(parts, [&](unsigned p) {
        uint32_t b0, b1;
        part_range(batch_size, p, parts, b0, b1);
        std::memset(result + b0 * W, 0, (b1 - b0) * W * sizeof(float));
        if (acc != nullptr) std::memset(acc + b0 * W, 0, (b1 - b0) * W * sizeof(int64_t));
    });
}

}  // namespace updlrm
