// packer.cpp - request packer and result merger (see packer.h for what they do).
#include "packer.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>
#include <utility>

namespace updlrm {

namespace {
constexpr uint64_t BAG_BYTES = sizeof(struct updlrm_bag);
inline double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
inline uint64_t align8(uint64_t x) { return (x + 7u) & ~uint64_t(7); }
inline uint64_t request_bytes(uint64_t nr_bags, uint64_t nr_ids) { return BAG_BYTES * nr_bags + align8(4u * nr_ids); }

// Sample range [b0, b1) of part p out of `parts` (B samples).
inline void part_range(uint32_t B, unsigned p, unsigned parts, uint32_t &b0, uint32_t &b1) {
    b0 = static_cast<uint32_t>(uint64_t(B) * p / parts);
    b1 = static_cast<uint32_t>(uint64_t(B) * (p + 1) / parts);
}
// Groups lookups [a, e) of one bag (group of lookup i: grp[i]) into units in order of first
// appearance; uid[i - a] = unit of lookup i. slot (per group, zero on entry and on return)
// holds unit + 1 meanwhile. Returns the number of units.
inline uint32_t group_bag(const uint32_t *grp, int64_t a, int64_t e, BatchPlan::BagUnit *units, uint32_t *uid,
                          uint32_t *slot) {
    uint32_t n = 0;
    for (int64_t i = a; i < e; i++) {
        const uint32_t g = grp[i];
        uint32_t u = slot[g];
        if (u == 0) {
            units[n] = BatchPlan::BagUnit{g, 0};
            u = slot[g] = ++n;
        }
        units[u - 1].count++;
        uid[i - a] = u - 1;
    }
    for (uint32_t u = 0; u < n; u++) slot[units[u].group] = 0;
    return n;
}

// Scratch for bags of up to n lookups.
inline void fit_bag(BatchPlan::Part &p, size_t n) {
    if (p.uid.size() < n) {
        p.uid.resize(n);
        p.ustart.resize(n);
        p.bag_grp.resize(n);
        p.bag_lrow.resize(n);
        p.bag_units_tmp.resize(n);
    }
}
}  // namespace

void run_parts(unsigned parts, const std::function<void(unsigned)> &fn) {
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

void water_fill(const uint64_t *loads, uint32_t R, uint64_t count, uint64_t *take, std::vector<uint32_t> &order) {
    std::fill(take, take + R, 0);
    if (count == 0 || R == 0) return;
    order.resize(R);
    std::iota(order.begin(), order.end(), 0u);
    auto before = [&](uint32_t a, uint32_t b) { return loads[a] < loads[b] || (loads[a] == loads[b] && a < b); };
    // Handing items one by one to the least-loaded bin (lowest index on ties) only ever reaches
    // the `count` bins that come first in (load, index) order: a later bin could only become the
    // least loaded after every earlier one took an item. So only those need sorting.
    uint32_t m = R;
    if (count < R) {
        m = static_cast<uint32_t>(count);
        std::nth_element(order.begin(), order.begin() + m, order.end(), before);
    }
    std::sort(order.begin(), order.begin() + m, before);
    // Raising the k lowest bins to the k-th lowest load costs k * s[k-1] - csum[k-1]; fill the
    // largest k whose cost fits, then share what is left evenly among them.
    uint64_t csum = 0, k = 0, csum_k = 0;
    for (uint32_t i = 0; i < m; i++) {
        uint64_t sv = loads[order[i]];
        csum += sv;
        if (uint64_t(i + 1) * sv - csum <= count) {
            k = i + 1;
            csum_k = csum;
        } else {
            break;
        }
    }
    const uint64_t level = (count + csum_k) / k, rem = (count + csum_k) % k;
    for (uint64_t i = 0; i < k; i++) take[order[i]] = level - loads[order[i]];
    // the remainder: one more each to the lowest-index bins among the k (the greedy tie rule)
    std::sort(order.begin(), order.begin() + k);
    for (uint64_t i = 0; i < rem; i++) take[order[i]] += 1;
}

unsigned Packer::threads_for(uint64_t work) const {
    // UPDLRM_HOST_THREADS=n forces n threads whatever the batch size (tests, experiments).
    const char *env = std::getenv("UPDLRM_HOST_THREADS");
    unsigned forced = env != nullptr ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : 0u;
    if (forced != 0) return std::min(forced, 16u);
    unsigned n = threads_ != 0 ? threads_ : std::thread::hardware_concurrency();
    if (n == 0) n = 1;
    n = std::min(n, 8u);
    // Starting a thread costs tens of microseconds: only worth it above ~50k lookups per thread.
    while (n > 1 && work < uint64_t(n) * 50000u) n--;
    return n;
}

void Packer::pass_a(BatchPlan &bp, BatchPlan::Part &p, const int64_t *indices, const int64_t *offsets) const {
    const PlanIndex &ix = *ix_;
    const PlanSpec &s = ix.spec();
    const uint32_t T = ix.nr_tables(), B = bp.batch_size;
    const int64_t N = static_cast<int64_t>(bp.nr_lookups);
    BatchPlan::DpuCount *dc = p.dc.data();
    uint32_t *ids = p.ids.data(), *bag_units = p.bag_units.data();
    BatchPlan::BagUnit *units = p.units.data();
    uint32_t nids = 0, nunits = 0;
    // Table by table (each table's index and groups stay in cache), bag by bag inside a table.
    for (uint32_t t = 0; t < T; t++) {
        for (uint32_t b = p.b0; b < p.b1; b++) {
            bag_units[size_t(b - p.b0) * T + t] = nunits;
            const uint64_t k = uint64_t(t) * B + b;
            const int64_t a = offsets[k], e = offsets[k + 1];
            if (a < 0 || e > N || e < a) {
                p.bad = k;
                p.bad_kind = 2;
                return;
            }
            if (a == e) continue;
            const uint32_t len = static_cast<uint32_t>(e - a);
            if (nids + uint64_t(len) > p.ids.size()) {  // offsets inconsistent with the part's size
                p.bad = k;
                p.bad_kind = 2;
                return;
            }
            const uint64_t rows = s.table_rows[t];
            fit_bag(p, len);
            uint32_t *lg = p.bag_grp.data(), *ll = p.bag_lrow.data();
            for (uint32_t j = 0; j < len; j++) {
                const int64_t r = indices[a + j];
                if (static_cast<uint64_t>(r) >= rows) {  // also a negative id
                    p.bad = static_cast<uint64_t>(a + j);
                    p.bad_kind = 1;
                    return;
                }
                ix.map(t, r, lg[j], ll[j]);
            }
            BatchPlan::BagUnit *bu = p.bag_units_tmp.data();
            const uint32_t nu = group_bag(lg, 0, len, bu, p.uid.data(), p.slot.data());
            // the units' local rows, unit after unit, into the part's id stream
            uint32_t *start = p.ustart.data();
            uint32_t pos = nids;
            for (uint32_t u = 0; u < nu; u++) {
                start[u] = pos;
                pos += bu[u].count;
            }
            const uint32_t *uid = p.uid.data();
            for (uint32_t j = 0; j < len; j++) ids[start[uid[j]]++] = ll[j];
            nids = pos;
            for (uint32_t u = 0; u < nu; u++) {
                const uint32_t g = bu[u].group, c = bu[u].count;
                units[nunits++] = bu[u];
                const GroupInfo &gi = ix.group(g);
                if (gi.nr_reps != 1) {
                    p.cache.push_back(BatchPlan::CacheUnit{g, c, 0});
                    continue;
                }
                if (gi.nslices0 == 1) {
                    const ShardInfo &sh = ix.shard(gi.shard0);
                    BatchPlan::DpuCount &kd = dc[sh.dpu];
                    kd.nb += 1;
                    kd.ni += c;
                    kd.ob += sh.row_bytes;
                    kd.el += uint64_t(c) * sh.ncols;
                    continue;
                }
                for (uint32_t q = s.rep_shard_ptr[gi.rep0]; q < s.rep_shard_ptr[gi.rep0 + 1]; q++) {
                    const ShardInfo &sh = ix.shard(s.rep_shards[q]);
                    BatchPlan::DpuCount &kd = dc[sh.dpu];
                    kd.nb += 1;
                    kd.ni += c;
                    kd.ob += sh.row_bytes;
                    kd.el += uint64_t(c) * sh.ncols;
                }
            }
        }
    }
    p.nr_units = nunits;
}

void Packer::choose_replicas(BatchPlan &bp) const {
    const PlanIndex &ix = *ix_;
    const PlanSpec &s = ix.spec();
    const uint32_t G = ix.nr_groups();
    if (bp.gcount.size() != G) {
        bp.gcount.assign(G, 0);
        bp.gfirst.assign(G, 0);
    }
    bp.touched_groups.clear();
    uint64_t total = 0;
    for (auto &p : bp.parts)
        for (const auto &u : p.cache) {
            if (bp.gcount[u.group]++ == 0) bp.touched_groups.push_back(u.group);
            total++;
        }
    if (total == 0) return;
    std::sort(bp.touched_groups.begin(), bp.touched_groups.end());
    uint32_t pos = 0;
    for (uint32_t g : bp.touched_groups) {
        bp.gfirst[g] = pos;
        pos += bp.gcount[g];
    }
    bp.unit_ref.resize(total);
    for (uint32_t pi = 0; pi < bp.parts.size(); pi++) {  // parts in sample order: units stay in bag order
        const auto &cache = bp.parts[pi].cache;
        for (uint32_t j = 0; j < cache.size(); j++) bp.unit_ref[bp.gfirst[cache[j].group]++] = {pi, j};
    }
    std::vector<uint64_t> bins, take, assigned;
    std::vector<uint32_t> scratch;
    uint64_t *load = bp.load.data();
    uint32_t end = 0;
    for (uint32_t g : bp.touched_groups) {
        const uint32_t n = bp.gcount[g];
        const uint32_t first = end;
        end += n;
        bp.gcount[g] = 0;  // scratch back to zero for the next batch
        const uint32_t r0 = s.group_rep_ptr[g], R = s.group_rep_ptr[g + 1] - r0;
        bins.assign(R, 0);
        for (uint32_t j = 0; j < R; j++)
            for (uint32_t q = s.rep_shard_ptr[r0 + j]; q < s.rep_shard_ptr[r0 + j + 1]; q++)
                bins[j] = std::max(bins[j], load[s.shard_dpu[s.rep_shards[q]]]);
        uint64_t C = 0;
        for (uint32_t u = first; u < end; u++) C += bp.parts[bp.unit_ref[u].first].cache[bp.unit_ref[u].second].count;
        take.resize(R);
        water_fill(bins.data(), R, C, take.data(), scratch);
        for (uint32_t j = 1; j < R; j++) take[j] += take[j - 1];  // quota bounds Q_j
        assigned.assign(R, 0);
        uint64_t P = 0;
        for (uint32_t u = first; u < end; u++) {
            BatchPlan::CacheUnit &cu = bp.parts[bp.unit_ref[u].first].cache[bp.unit_ref[u].second];
            const uint64_t mid = P + cu.count / 2;
            const uint32_t j = static_cast<uint32_t>(std::upper_bound(take.begin(), take.end(), mid) - take.begin());
            cu.rep = j;
            assigned[j] += cu.count;
            P += cu.count;
        }
        for (uint32_t j = 0; j < R; j++)
            if (assigned[j] != 0)
                for (uint32_t q = s.rep_shard_ptr[r0 + j]; q < s.rep_shard_ptr[r0 + j + 1]; q++)
                    load[s.shard_dpu[s.rep_shards[q]]] += assigned[j];
    }
}

void Packer::count_cache_units(BatchPlan::Part &p) const {
    const PlanSpec &s = ix_->spec();
    for (const auto &u : p.cache) {
        const uint32_t r = s.group_rep_ptr[u.group] + u.rep;
        for (uint32_t q = s.rep_shard_ptr[r]; q < s.rep_shard_ptr[r + 1]; q++) {
            const uint32_t sh = s.rep_shards[q], d = s.shard_dpu[sh];
            BatchPlan::DpuCount &k = p.dc[d];
            k.nb += 1;
            k.ni += u.count;
            k.ob += s.shard_row_bytes[sh];
            k.el += uint64_t(u.count) * s.shard_ncols[sh];
        }
    }
}

void Packer::pass_b(BatchPlan &bp, BatchPlan::Part &p, uint8_t *req, size_t stride) const {
    const PlanIndex &ix = *ix_;
    const PlanSpec &s = ix.spec();
    const uint32_t T = ix.nr_tables(), D = ix.nr_dpus();
    const BatchPlan::DpuCount *tot = bp.tot.data();
    BatchPlan::DpuCount *dc = p.dc.data();
    p.stage.resize(D);
    p.stage_nb.assign(D, 0);
    p.stage_ni.assign(D, 0);
    BatchPlan::Stage *stage = p.stage.data();
    uint8_t *snb = p.stage_nb.data(), *sni = p.stage_ni.data();
    // DPU d's slice: bags at bags(d), ids at ids(d); the part writes from its start positions on.
    auto bags = [&](uint32_t d) { return req + size_t(d) * stride; };
    auto ids = [&](uint32_t d) { return reinterpret_cast<uint32_t *>(req + size_t(d) * stride + BAG_BYTES * tot[d].nb); };
    p.recs.resize(p.nr_recs);  // one per unit and column slice, counted in pass A / choice
    BatchPlan::UnitRec *rec = p.recs.data();
    uint32_t nrec = 0, idpos = 0;
    size_t cu = 0;
    for (uint32_t t = 0; t < T; t++) {  // pass A's order: the unit stream is read as written
        for (uint32_t b = p.b0; b < p.b1; b++) {
            const size_t kb = size_t(b - p.b0) * T + t;
            const uint32_t u_end = (b + 1 < p.b1) ? p.bag_units[kb + T] : (t + 1 < T ? p.bag_units[t + 1] : p.nr_units);
            p.rec_ptr[kb] = nrec;
            for (uint32_t u = p.bag_units[kb]; u < u_end; u++) {
                const uint32_t g = p.units[u].group, c = p.units[u].count;
                const uint32_t *src_ids = p.ids.data() + idpos;
                idpos += c;
                const GroupInfo &gi = ix.group(g);
                const uint32_t r = gi.rep0 + (gi.nr_reps == 1 ? 0u : p.cache[cu++].rep);
                const bool one = gi.nr_reps == 1 && gi.nslices0 == 1;
                const uint32_t q0 = one ? 0 : s.rep_shard_ptr[r], q1 = one ? 1 : s.rep_shard_ptr[r + 1];
                for (uint32_t q = q0; q < q1; q++) {
                    const uint32_t sh = one ? gi.shard0 : s.rep_shards[q];
                    const ShardInfo &si = ix.shard(sh);
                    const uint32_t d = si.dpu;
                    BatchPlan::DpuCount &kd = dc[d];
                    BatchPlan::Stage &sg = stage[d];
                    updlrm_bag &bag = sg.bag[snb[d]];
                    bag.shard = si.local;
                    bag.nr_lookups = c;
                    bag.first_lookup = static_cast<uint32_t>(kd.ni);
                    bag.out_offset = static_cast<uint32_t>(kd.ob);
                    kd.nb++;
                    if (snb[d] == 0) __builtin_prefetch(bags(d) + BAG_BYTES * (kd.nb + 3), 1);  // where the 4 go
                    if (++snb[d] == 4) {  // staged bags occupy positions [nb - 4, nb)
                        std::memcpy(bags(d) + BAG_BYTES * (kd.nb - 4), sg.bag, sizeof sg.bag);
                        snb[d] = 0;
                    }
                    rec[nrec++] = BatchPlan::UnitRec{d, static_cast<uint32_t>(kd.ob), sh};
                    kd.ob += si.row_bytes;
                    uint32_t n_st = sni[d];
                    for (uint32_t j = 0; j < c; j++) {  // staged ids occupy [ni - n_st, ni)
                        if (n_st == 0) __builtin_prefetch(ids(d) + kd.ni + 15, 1);
                        sg.id[n_st++] = src_ids[j];
                        kd.ni++;
                        if (n_st == 16) {
                            std::memcpy(ids(d) + (kd.ni - 16), sg.id, sizeof sg.id);
                            n_st = 0;
                        }
                    }
                    sni[d] = static_cast<uint8_t>(n_st);
                }
            }
            p.rec_end[kb] = nrec;
        }
    }
    for (uint32_t d = 0; d < D; d++) {  // what is still staged
        if (snb[d] != 0) std::memcpy(bags(d) + BAG_BYTES * (dc[d].nb - snb[d]), stage[d].bag, BAG_BYTES * snb[d]);
        if (sni[d] != 0) std::memcpy(ids(d) + (dc[d].ni - sni[d]), stage[d].id, 4u * sni[d]);
    }
}

void Packer::finish_args(BatchPlan &bp, Launch &L, const BatchPlan::DpuCount *dc) const {
    const PlanSpec &s = ix_->spec();
    const uint32_t D = ix_->nr_dpus();
    L.args.resize(D);
    for (uint32_t d = 0; d < D; d++) {
        const BatchPlan::DpuCount &k = dc[d];
        // The last id word of an odd count is padding the kernel never reads; zero it so that
        // what is pushed does not depend on earlier batches (the rest of the stride past the
        // request is never read either: the args bound what the kernel reads).
        if (k.ni & 1u) std::memset(L.request.data() + size_t(d) * L.request_stride + BAG_BYTES * k.nb + 4u * k.ni, 0, 4);
        updlrm_launch_args &a = L.args[d];
        a.abi_version = UPDLRM_ABI_VERSION;
        a.nr_shards = s.nr_shards_on_dpu[d];
        a.nr_bags = static_cast<uint32_t>(k.nb);
        a.nr_lookups = static_cast<uint32_t>(k.ni);
        a.bags_offset = s.request_offset;
        a.lookups_offset = s.request_offset + static_cast<uint32_t>(BAG_BYTES * k.nb);
        a.out_offset = s.output_offset;
        a.out_bytes = static_cast<uint32_t>(k.ob);
        bp.counters.lookups.push_back(k.ni);
        bp.counters.bags.push_back(k.nb);
        bp.counters.elements.push_back(k.el);
        bp.counters.request_bytes.push_back(request_bytes(k.nb, k.ni));
        bp.counters.output_bytes.push_back(k.ob);
    }
}

void Packer::pack(const int64_t *indices, uint64_t nr_indices, const int64_t *offsets, uint32_t batch_size,
                  BatchPlan &bp) const {
    const PlanIndex &ix = *ix_;
    const PlanSpec &s = ix.spec();
    const uint32_t T = ix.nr_tables(), D = ix.nr_dpus(), G = ix.nr_groups();
    const uint64_t K = uint64_t(T) * batch_size;
    bp.error_kind = BatchPlan::OK;
    bp.error.clear();
    bp.batch_size = batch_size;
    bp.nr_launches = 0;
    bp.output_stride = 0;
    bp.counters.clear();
    if (offsets[0] != 0 || offsets[K] != static_cast<int64_t>(nr_indices)) {
        bp.error_kind = BatchPlan::INPUT;
        bp.error = "offsets must run from 0 to len(indices)=" + std::to_string(nr_indices) + ", got " +
                   std::to_string(offsets[0]) + ".." + std::to_string(offsets[K]);
        return;
    }
    bp.nr_lookups = nr_indices;
    unsigned P = threads_for(nr_indices);
    P = std::max(1u, std::min<unsigned>(P, batch_size));
    bp.parts.resize(P);
    for (unsigned pi = 0; pi < P; pi++) {
        BatchPlan::Part &p = bp.parts[pi];
        part_range(batch_size, pi, P, p.b0, p.b1);
        if (p.slot.size() != G) p.slot.assign(G, 0);  // zero between bags: every use resets what it set
        uint64_t n_part = 0;  // the part's lookups (pass A checks the offsets it relies on)
        for (uint32_t t = 0; t < T; t++) {
            const int64_t lo = offsets[uint64_t(t) * batch_size + p.b0], hi = offsets[uint64_t(t) * batch_size + p.b1];
            if (hi > lo) n_part += uint64_t(hi - lo);
        }
        n_part = std::min<uint64_t>(n_part, nr_indices);
        if (p.ids.size() < n_part) p.ids.resize(n_part);
        if (p.units.size() < n_part) p.units.resize(n_part);
        p.bag_units.resize(size_t(p.b1 - p.b0) * T + 1);
        p.dc.assign(D, BatchPlan::DpuCount{0, 0, 0, 0});
        p.nr_recs = 0;
        p.cache.clear();
        p.recs.clear();
        p.rec_ptr.assign(size_t(p.b1 - p.b0) * T, 0);
        p.rec_end.assign(size_t(p.b1 - p.b0) * T, 0);
        p.bad = UINT64_MAX;
        p.bad_kind = 0;
    }
    const double t0 = now_s();
    run_parts(P, [&](unsigned pi) { pass_a(bp, bp.parts[pi], indices, offsets); });
    const double t1 = now_s();
    bp.pass_a_s = t1 - t0;
    for (unsigned pi = 0; pi < P; pi++) {  // the first error in sample order
        BatchPlan::Part &p = bp.parts[pi];
        if (p.bad_kind == 0) continue;
        bp.error_kind = BatchPlan::INPUT;
        if (p.bad_kind == 2) {
            uint64_t k = p.bad;
            bp.error = "offsets of table " + std::to_string(k / batch_size) + ", sample " + std::to_string(k % batch_size) +
                       " run from " + std::to_string(offsets[k]) + " to " + std::to_string(offsets[k + 1]) +
                       " (offsets must not decrease and must stay within 0.." + std::to_string(nr_indices) + ")";
        } else {
            uint64_t i = p.bad;
            uint64_t k = static_cast<uint64_t>(std::upper_bound(offsets, offsets + K + 1, static_cast<int64_t>(i)) - offsets) - 1;
            uint32_t t = static_cast<uint32_t>(k / batch_size);
            bp.error = "table " + std::to_string(t) + ", sample " + std::to_string(k % batch_size) + ", position " +
                       std::to_string(i) + ": index " + std::to_string(indices[i]) + " is outside 0.." +
                       std::to_string(s.table_rows[t] - 1);
        }
        return;
    }
    bp.load.assign(D, 0);
    for (auto &p : bp.parts)
        for (uint32_t d = 0; d < D; d++) bp.load[d] += p.dc[d].ni;
    choose_replicas(bp);
    run_parts(P, [&](unsigned pi) { count_cache_units(bp.parts[pi]); });
    const double t2 = now_s();
    bp.choose_s = t2 - t1;
    // Totals per DPU; each part's counts become its starting positions (prefix over parts).
    bp.tot.assign(D, BatchPlan::DpuCount{0, 0, 0, 0});
    uint64_t total_bags = 0;
    for (auto &p : bp.parts)
        for (uint32_t d = 0; d < D; d++) {
            BatchPlan::DpuCount &k = p.dc[d], &t = bp.tot[d];
            const BatchPlan::DpuCount here = k;
            p.nr_recs += here.nb;
            k.nb = t.nb;  // the part's start positions
            k.ni = t.ni;
            k.ob = t.ob;
            t.nb += here.nb;
            t.ni += here.ni;
            t.ob += here.ob;
            t.el += here.el;
            total_bags += here.nb;
        }
    size_t stride = 0, out_max = 0;
    bool one_launch = true;
    for (uint32_t d = 0; d < D; d++) {
        const uint64_t rb = request_bytes(bp.tot[d].nb, bp.tot[d].ni);
        stride = std::max<size_t>(stride, rb);
        out_max = std::max<size_t>(out_max, bp.tot[d].ob);
        if (rb > s.request_capacity || bp.tot[d].ob > s.output_capacity) one_launch = false;
    }
    bp.output_stride = out_max;
    if (total_bags == 0) {  // every bag empty: nothing to launch, the merge writes zeros
        for (auto &p : bp.parts) {
            std::fill(p.rec_ptr.begin(), p.rec_ptr.end(), 0u);
            std::fill(p.rec_end.begin(), p.rec_end.end(), 0u);
            p.recs.clear();
        }
        return;
    }
    uint8_t *req;
    if (one_launch) {
        if (bp.launches.empty()) bp.launches.emplace_back();
        Launch &L = bp.launches[0];
        L.request_stride = stride;
        L.output_bytes = out_max;
        L.pieces.clear();
        if (L.request.size() < stride * D) L.request.resize(stride * D);
        req = L.request.data();
    } else {
        bp.full_stride = stride;
        if (bp.full.size() < stride * D) bp.full.resize(stride * D);
        req = bp.full.data();
    }
    run_parts(P, [&](unsigned pi) { pass_b(bp, bp.parts[pi], req, stride); });
    bp.pass_b_s = now_s() - t2;
    if (one_launch) {
        finish_args(bp, bp.launches[0], bp.tot.data());
        bp.nr_launches = 1;
        return;
    }
    std::string err = cut_launches(bp);
    if (!err.empty()) {
        bp.error_kind = BatchPlan::PLAN;
        bp.error = err;
        bp.nr_launches = 0;
    }
}

std::string Packer::cut_launches(BatchPlan &bp) const {
    const PlanIndex &ix = *ix_;
    const PlanSpec &s = ix.spec();
    const uint32_t D = ix.nr_dpus();
    const uint64_t cap_req = s.request_capacity, cap_out = s.output_capacity;
    struct Cut {
        uint32_t bag, off, count, chunk;
    };
    std::vector<std::vector<Cut>> cuts(D);
    size_t nr_chunks = 0;
    for (uint32_t d = 0; d < D; d++) {
        const uint8_t *base = bp.full.data() + size_t(d) * bp.full_stride;
        uint64_t cb = 0, ci = 0, co = 0;
        uint32_t chunk = 0;
        for (uint32_t j = 0; j < bp.tot[d].nb; j++) {
            updlrm_bag bag;
            std::memcpy(&bag, base + BAG_BYTES * j, sizeof bag);
            const uint64_t rb = s.shard_row_bytes[ix.shard_of(d, bag.shard)];
            if (rb > cap_out || cap_req < BAG_BYTES + 8)
                return "the plan's per-DPU request_bytes=" + std::to_string(cap_req) + " / output_bytes=" +
                       std::to_string(cap_out) + " cannot hold one lookup of a " + std::to_string(rb) + " B row; make them larger";
            uint32_t remaining = bag.nr_lookups, off = 0;
            const uint64_t whole = ((cap_req - BAG_BYTES) & ~uint64_t(7)) / 4;  // ids one bag may have in an empty launch
            while (remaining > 0) {
                uint64_t room = 0;
                if (co + rb <= cap_out && cap_req >= BAG_BYTES * (cb + 1)) {
                    const uint64_t avail = (cap_req - BAG_BYTES * (cb + 1)) & ~uint64_t(7);
                    room = avail / 4 > ci ? avail / 4 - ci : 0;
                }
                // a bag that fits a fresh launch whole is not cut to fill this one
                if (room == 0 || (room < remaining && remaining <= whole && cb > 0)) {
                    chunk++;
                    cb = ci = co = 0;
                    continue;
                }
                const uint32_t x = static_cast<uint32_t>(std::min<uint64_t>(remaining, room));
                cuts[d].push_back(Cut{j, off, x, chunk});
                cb++;
                ci += x;
                co += rb;
                remaining -= x;
                off += x;
            }
        }
        if (!cuts[d].empty()) nr_chunks = std::max<size_t>(nr_chunks, size_t(chunk) + 1);
    }
    if (bp.launches.size() < nr_chunks) bp.launches.resize(nr_chunks);
    std::vector<size_t> pos(D, 0);
    std::vector<BatchPlan::DpuCount> dc(D);
    for (size_t l = 0; l < nr_chunks; l++) {
        Launch &L = bp.launches[l];
        size_t stride = 0, out_max = 0;
        std::vector<size_t> end(D);
        for (uint32_t d = 0; d < D; d++) {
            size_t e = pos[d];
            BatchPlan::DpuCount &k = dc[d];
            k = BatchPlan::DpuCount{0, 0, 0, 0};
            while (e < cuts[d].size() && cuts[d][e].chunk == l) {
                const uint8_t *base = bp.full.data() + size_t(d) * bp.full_stride;
                updlrm_bag bag;
                std::memcpy(&bag, base + BAG_BYTES * cuts[d][e].bag, sizeof bag);
                const uint32_t sh = ix.shard_of(d, bag.shard);
                k.nb++;
                k.ni += cuts[d][e].count;
                k.ob += s.shard_row_bytes[sh];
                k.el += uint64_t(cuts[d][e].count) * s.shard_ncols[sh];
                e++;
            }
            end[d] = e;
            stride = std::max<size_t>(stride, request_bytes(k.nb, k.ni));
            out_max = std::max<size_t>(out_max, k.ob);
        }
        L.request_stride = stride;
        L.output_bytes = out_max;
        if (L.request.size() < stride * D) L.request.resize(stride * D);
        L.pieces.assign(D, {});
        for (uint32_t d = 0; d < D; d++) {
            const uint8_t *base = bp.full.data() + size_t(d) * bp.full_stride;
            const uint32_t *ids = reinterpret_cast<const uint32_t *>(base + BAG_BYTES * bp.tot[d].nb);
            uint8_t *dst = L.request.data() + size_t(d) * stride;
            uint32_t *dst_ids = reinterpret_cast<uint32_t *>(dst + BAG_BYTES * dc[d].nb);
            uint32_t bi = 0, li = 0, oo = 0;
            for (size_t e = pos[d]; e < end[d]; e++) {
                const Cut &c = cuts[d][e];
                updlrm_bag bag;
                std::memcpy(&bag, base + BAG_BYTES * c.bag, sizeof bag);
                const uint32_t rb = s.shard_row_bytes[ix.shard_of(d, bag.shard)];
                L.pieces[d].push_back(Launch::Piece{bag.out_offset, rb, c.off == 0});
                std::memcpy(dst_ids + li, ids + bag.first_lookup + c.off, 4u * c.count);
                updlrm_bag nbag{bag.shard, c.count, li, oo};
                std::memcpy(dst + BAG_BYTES * bi, &nbag, sizeof nbag);
                bi++;
                li += c.count;
                oo += rb;
            }
            pos[d] = end[d];
        }
        finish_args(bp, L, dc.data());
    }
    bp.nr_launches = nr_chunks;
    return "";
}

void Packer::gather_launch(BatchPlan &bp, size_t l, const uint8_t *launch_output, size_t stride) const {
    const uint32_t D = ix_->nr_dpus();
    const bool is_int = ix_->integer_dtype();
    const Launch &L = bp.launches[l];
    for (uint32_t d = 0; d < D; d++) {
        const uint8_t *src = launch_output + size_t(d) * stride;
        uint8_t *dst = bp.output.data() + size_t(d) * bp.output_stride;
        uint32_t oo = 0;
        for (const Launch::Piece &pc : L.pieces[d]) {
            if (pc.first) {
                std::memcpy(dst + pc.out_offset, src + oo, pc.bytes);
            } else if (is_int) {
                int32_t *o = reinterpret_cast<int32_t *>(dst + pc.out_offset);
                const int32_t *q = reinterpret_cast<const int32_t *>(src + oo);
                for (uint32_t c = 0; c < pc.bytes / 4; c++) o[c] += q[c];
            } else {
                float *o = reinterpret_cast<float *>(dst + pc.out_offset);
                const float *q = reinterpret_cast<const float *>(src + oo);
                for (uint32_t c = 0; c < pc.bytes / 4; c++) o[c] += q[c];
            }
            oo += pc.bytes;
        }
    }
}

// Sum of one bag's partial sums recs[r0, r1) (Q: their element type) into acc[0, dim) of the
// accumulator type A, each column slice at its place in the table's row; returns acc.
template <class Q, class A>
const A *sum_units(const PlanIndex &ix, const BatchPlan::UnitRec *recs, uint32_t r0, uint32_t r1, const uint8_t *out,
                   size_t ostride, uint32_t col_t, uint32_t dim, A *acc) {
    std::fill(acc, acc + dim, A(0));
    for (uint32_t r = r0; r < r1; r++) {
        const BatchPlan::UnitRec &u = recs[r];
        const ShardInfo &sh = ix.shard(u.shard);
        const Q *q = reinterpret_cast<const Q *>(out + size_t(u.dpu) * ostride + u.out_offset);
        A *a = acc + (sh.col - col_t);
        for (uint32_t c = 0; c < sh.ncols; c++) a[c] += q[c];
    }
    return acc;
}

void Packer::merge(const BatchPlan &bp, float *result) const {
    const PlanIndex &ix = *ix_;
    const PlanSpec &s = ix.spec();
    const uint32_t T = ix.nr_tables(), W = ix.width();
    const bool is_int = ix.integer_dtype();
    const uint8_t *out = bp.output.data();
    const size_t ostride = bp.output_stride;
    const double *scale = s.col_scale.data();
    run_parts(static_cast<unsigned>(bp.parts.size()), [&](unsigned pi) {
        const BatchPlan::Part &p = bp.parts[pi];
        std::vector<int64_t> iacc(ix.max_dim());
        std::vector<float> facc(ix.max_dim());
        const BatchPlan::UnitRec *recs = p.recs.data();
        for (uint32_t b = p.b0; b < p.b1; b++) {  // result rows in order
            for (uint32_t t = 0; t < T; t++) {
                const size_t rp = size_t(b - p.b0) * T + t;
                const uint32_t r0 = p.rec_ptr[rp], r1 = p.rec_end[rp];
                const uint32_t dim = s.table_dim[t], col_t = ix.table_col(t);
                float *dst = result + size_t(b) * W + col_t;
                if (b + 2 < p.b1) {  // partial sums are scattered over the DPUs' outputs: fetch ahead
                    const size_t ra = rp + 2 * T;
                    for (uint32_t r = p.rec_ptr[ra]; r < p.rec_end[ra]; r++)
                        __builtin_prefetch(out + size_t(recs[r].dpu) * ostride + recs[r].out_offset);
                }
                if (r0 == r1) {
                    std::memset(dst, 0, sizeof(float) * dim);
                    continue;
                }
                const bool whole = r1 - r0 == 1 && ix.shard(recs[r0].shard).ncols == dim;
                if (is_int) {
                    const double *sc = scale + col_t;
                    if (whole) {
                        const int32_t *q = reinterpret_cast<const int32_t *>(out + size_t(recs[r0].dpu) * ostride + recs[r0].out_offset);
                        for (uint32_t c = 0; c < dim; c++) dst[c] = static_cast<float>(static_cast<double>(q[c]) / sc[c]);
                        continue;
                    }
                    const int64_t *acc = sum_units<int32_t>(ix, recs, r0, r1, out, ostride, col_t, dim, iacc.data());
                    for (uint32_t c = 0; c < dim; c++) dst[c] = static_cast<float>(static_cast<double>(acc[c]) / sc[c]);
                } else {
                    if (whole) {
                        std::memcpy(dst, out + size_t(recs[r0].dpu) * ostride + recs[r0].out_offset, sizeof(float) * dim);
                        continue;
                    }
                    std::memcpy(dst, sum_units<float>(ix, recs, r0, r1, out, ostride, col_t, dim, facc.data()),
                                sizeof(float) * dim);
                }
            }
        }
    });
}

}  // namespace updlrm
