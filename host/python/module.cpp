// module.cpp - the pybind11 module of the PIM backend: `updlrm._native._emu` (host driver linked
// with the emulator) or `updlrm._native._sdk` (the same driver linked with the UPMEM SDK's libdpu).
//
// Runtime: DPU set + loaded kernel + the PlanIndex/packer/merger of one plan. A batch goes
//   pack(indices, offsets, B) -> PackedBatch   host: map, choose replicas, build requests
//   start(batch)                                push + asynchronous launch (returns while DPUs run)
//   finish(batch) -> dict                       wait, status, pull (+ any further launches)
//   merge(batch, out)                           host: fused scatter-add + dequantize into [B, W]
// so that a caller can pack batch n+1 and merge batch n-1 while the DPUs run batch n
// (updlrm/pim/embedding.py runs the four in a row for one batch, interleaved for a stream). The GIL is released in each. Errors of a batch come back as a dict
// {"kind", "message", "dpu", "tasklet", "reason", ...} so that Python raises the right exception
// (kind "input" for bad ids/offsets, "plan" for capacities, "fault"/"kernel" from the DPUs);
// argument errors raise ValueError. HostPacker is the packer and merger alone (no DPUs), for
// benchmarks and for checking the partitioner's Router. Nothing here exits the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "driver.h"
#include "loader_py.h"
#include "packer.h"

#include <dpu.h>  // DPU_MRAM_HEAP_POINTER_NAME (the SDK's and the emulator's dpu.h both define it)
#ifdef UPDLRM_EMULATOR
#include <dpu_emu.h>
#endif

#ifndef UPDLRM_MODULE_NAME
#define UPDLRM_MODULE_NAME _emu
#endif

namespace py = pybind11;
using updlrm::BatchPlan;
using updlrm::Launch;
using updlrm::PackCounters;
using updlrm::Packer;
using updlrm::PlanIndex;
using updlrm::PlanSpec;

namespace {

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename T>
std::vector<T> to_vec(const py::dict &d, const char *key) {
    if (!d.contains(key)) throw py::value_error(std::string("plan spec lacks '") + key + "'");
    auto arr = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(d[key]);
    if (!arr) throw py::value_error(std::string("plan spec '") + key + "' is not an array");
    return std::vector<T>(arr.data(), arr.data() + arr.size());
}

template <typename T>
py::array_t<T> np_1d(const std::vector<T> &v) {
    py::array_t<T> a(v.size());
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
    return a;
}

template <typename T>
py::array_t<T> np_3d(const std::vector<T> &v, size_t a, size_t b, size_t c) {
    py::array_t<T> arr({a, b, c});
    if (!v.empty()) std::memcpy(arr.mutable_data(), v.data(), v.size() * sizeof(T));
    return arr;
}

template <typename T>
py::array_t<T> np_2d(const std::vector<T> &v, size_t rows, size_t cols) {
    py::array_t<T> a({rows, cols});
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
    return a;
}


// One batch from pack to merge: the packer's BatchPlan plus the times, counters and error of its
// launches. Owned by Python (PackedBatch) and by the runtime's reuse pool.
struct BatchState {
    enum Stage { PACKED = 0, STARTED = 1, FINISHED = 2 };
    std::shared_ptr<Packer> packer;
    BatchPlan bp;
    Stage stage = PACKED;
    bool running = false;
    size_t next = 0;  // launch running or next to run
    double pack_s = 0, c2d_s = 0, kernel_s = 0, status_s = 0, d2c_s = 0;
    std::vector<uint64_t> push_bytes, pull_bytes;
    // Per launch that ran: [L][N][T] kernel and DMA figures, [L][N] emulator wall/modeled cycles.
    std::vector<uint64_t> cycles, tl_lookups, rd_ops, rd_bytes, wr_ops, wr_bytes;
    std::vector<uint64_t> emu_wall_ns, modeled_cycles, wram_static, wram_heap;
    std::string err_kind, err_msg, err_reason;
    updlrm_fault fault{};

    void reset(std::shared_ptr<Packer> p) {
        packer = std::move(p);
        stage = PACKED;
        running = false;
        next = 0;
        pack_s = c2d_s = kernel_s = status_s = d2c_s = 0;
        for (auto *v : {&push_bytes, &pull_bytes, &cycles, &tl_lookups, &rd_ops, &rd_bytes, &wr_ops, &wr_bytes,
                        &emu_wall_ns, &modeled_cycles, &wram_static, &wram_heap})
            v->clear();
        err_kind.clear();
        err_msg.clear();
        err_reason.clear();
        fault = updlrm_fault{};
        fault.dpu = fault.tasklet = -1;
    }
    void set_error(const std::string &kind, const std::string &msg) {
        if (!err_kind.empty()) return;  // the first error wins
        err_kind = kind;
        err_msg = msg;
    }
    void drv_error(int code, const char *msg) {
        set_error(code == UPDLRM_DRV_ERR_FAULT ? "fault" : code == UPDLRM_DRV_ERR_KERNEL ? "kernel" : "native", msg);
        err_reason = fault.reason;
    }
    void collect_counters(updlrm_driver *drv, uint32_t N) {
#ifdef UPDLRM_EMULATOR
        std::vector<dpu_emu_counters> ec(N);
        if (updlrm_driver_emu_counters(drv, ec.data(), nullptr, 0) != UPDLRM_DRV_OK) return;
        const size_t T = UPDLRM_MAX_TASKLETS;
        for (uint32_t d = 0; d < N; d++) {
            for (size_t t = 0; t < T; t++) {
                bool in = t < DPU_EMU_MAX_TASKLETS;
                rd_ops.push_back(in ? ec[d].dma_read_ops[t] : 0);
                rd_bytes.push_back(in ? ec[d].dma_read_bytes[t] : 0);
                wr_ops.push_back(in ? ec[d].dma_write_ops[t] : 0);
                wr_bytes.push_back(in ? ec[d].dma_write_bytes[t] : 0);
            }
            emu_wall_ns.push_back(ec[d].wall_ns);
            modeled_cycles.push_back(ec[d].modeled_cycles);
            wram_static.push_back(ec[d].wram_static_bytes);
            wram_heap.push_back(ec[d].wram_heap_peak_bytes);
        }
#else
        (void)drv;
        (void)N;
#endif
    }
    // The batch's figures (and error) as the dict updlrm/pim/embedding.py records.
    py::dict result(uint32_t N) const {
        const size_t T = UPDLRM_MAX_TASKLETS;
        py::dict r;
        r["pack_native_s"] = pack_s;
        r["pack_steps_s"] = py::make_tuple(bp.pass_a_s, bp.choose_s, bp.pass_b_s);
        r["cpu_to_dpu_s"] = c2d_s;
        r["kernel_s"] = kernel_s;
        r["status_s"] = status_s;
        r["dpu_to_cpu_s"] = d2c_s;
        r["nr_launches"] = bp.nr_launches;
        r["request_push_bytes"] = push_bytes;
        r["output_pull_bytes"] = pull_bytes;
        const PackCounters &pc = bp.counters;
        size_t L = pc.lookups.size() / (N ? N : 1);
        r["lookups"] = np_2d(pc.lookups, L, N);
        r["bags"] = np_2d(pc.bags, L, N);
        r["elements"] = np_2d(pc.elements, L, N);
        r["request_bytes"] = np_2d(pc.request_bytes, L, N);
        r["output_bytes"] = np_2d(pc.output_bytes, L, N);
        size_t ran = cycles.size() / (size_t(N) * T);
        r["kernel_cycles"] = np_3d(cycles, ran, N, T);
        r["tasklet_lookups"] = np_3d(tl_lookups, ran, N, T);
#ifdef UPDLRM_EMULATOR
        size_t counted = rd_ops.size() / (size_t(N) * T);
        r["dma_read_ops"] = np_3d(rd_ops, counted, N, T);
        r["dma_read_bytes"] = np_3d(rd_bytes, counted, N, T);
        r["dma_write_ops"] = np_3d(wr_ops, counted, N, T);
        r["dma_write_bytes"] = np_3d(wr_bytes, counted, N, T);
        r["emu_wall_ns"] = np_2d(emu_wall_ns, counted, N);
        r["modeled_cycles"] = np_2d(modeled_cycles, counted, N);
        r["wram_static_bytes"] = np_2d(wram_static, counted, N);
        r["wram_heap_peak_bytes"] = np_2d(wram_heap, counted, N);
#endif
        if (!err_kind.empty()) {
            py::dict e;
            e["kind"] = err_kind;
            e["message"] = err_msg;
            e["reason"] = err_reason.empty() ? err_msg : err_reason;
            e["dpu"] = fault.dpu;
            e["tasklet"] = fault.tasklet;
            e["kernel_code"] = fault.kernel_code;
            e["bad_bag"] = fault.bad_bag;
            e["bad_value"] = fault.bad_value;
            r["error"] = e;
        }
        return r;
    }
};

template <typename T>
std::vector<T> opt_vec(const py::dict &d, const char *key) {
    return d.contains(key) ? to_vec<T>(d, key) : std::vector<T>();
}

// PlanSpec from the dict updlrm/pim/layout.py's PlanLayout.native_spec() builds; ValueError on
// an inconsistent spec.
std::shared_ptr<Packer> make_packer(const py::dict &d, uint32_t nr_dpus) {
    PlanSpec s;
    s.nr_dpus = nr_dpus;
    s.dtype = d["dtype"].cast<uint32_t>();
    s.table_rows = to_vec<uint64_t>(d, "table_rows");
    s.table_dim = to_vec<uint32_t>(d, "table_dim");
    s.shard_dpu = to_vec<uint32_t>(d, "shard_dpu");
    s.shard_local = to_vec<uint32_t>(d, "shard_local");
    s.shard_col = to_vec<uint32_t>(d, "shard_col");
    s.shard_ncols = to_vec<uint32_t>(d, "shard_ncols");
    s.shard_row_bytes = to_vec<uint32_t>(d, "shard_row_bytes");
    s.shard_table = to_vec<uint32_t>(d, "shard_table");
    s.group_table = to_vec<uint32_t>(d, "group_table");
    s.group_kind = to_vec<uint32_t>(d, "group_kind");
    s.group_lo = to_vec<int64_t>(d, "group_lo");
    s.group_hi = to_vec<int64_t>(d, "group_hi");
    s.group_rows_ptr = to_vec<uint64_t>(d, "group_rows_ptr");
    s.group_rows = to_vec<int64_t>(d, "group_rows");
    s.group_rep_ptr = to_vec<uint32_t>(d, "group_rep_ptr");
    s.rep_shard_ptr = to_vec<uint32_t>(d, "rep_shard_ptr");
    s.rep_shards = to_vec<uint32_t>(d, "rep_shards");
    s.nr_shards_on_dpu = to_vec<uint32_t>(d, "nr_shards_on_dpu");
    s.col_scale = opt_vec<double>(d, "col_scale");
    s.request_offset = d["request_offset"].cast<uint32_t>();
    s.request_capacity = d["request_capacity"].cast<uint32_t>();
    s.output_offset = d["output_offset"].cast<uint32_t>();
    s.output_capacity = d["output_capacity"].cast<uint32_t>();
    std::shared_ptr<const PlanIndex> ix;
    {
        py::gil_scoped_release release;
        try {
            ix = std::make_shared<const PlanIndex>(std::move(s));
        } catch (const std::invalid_argument &e) {
            py::gil_scoped_acquire acquire;
            throw py::value_error(e.what());
        }
    }
    auto packer = std::make_shared<Packer>(ix);
    if (d.contains("threads")) packer->set_threads(d["threads"].cast<unsigned>());
    return packer;
}

std::shared_ptr<BatchState> pack_batch(const std::shared_ptr<Packer> &packer,
                                       py::array_t<int64_t, py::array::c_style | py::array::forcecast> &indices,
                                       py::array_t<int64_t, py::array::c_style | py::array::forcecast> &offsets,
                                       uint32_t batch_size, std::shared_ptr<BatchState> st) {
    const PlanIndex &ix = packer->index();
    if (indices.ndim() != 1 || offsets.ndim() != 1)
        throw py::value_error("pack: indices and offsets must be 1-D int64 arrays");
    if (static_cast<uint64_t>(offsets.size()) != uint64_t(ix.nr_tables()) * batch_size + 1)
        throw py::value_error("pack: offsets has " + std::to_string(offsets.size()) + " entries, expected T*B+1 = " +
                              std::to_string(uint64_t(ix.nr_tables()) * batch_size + 1));
    st->reset(packer);
    const int64_t *idx = indices.data();
    const int64_t *off = offsets.data();
    const uint64_t n = static_cast<uint64_t>(indices.size());
    {
        py::gil_scoped_release release;
        double t0 = now_s();
        packer->pack(idx, n, off, batch_size, st->bp);
        BatchPlan &bp = st->bp;
        if (bp.error_kind == BatchPlan::OK && bp.output.size() < bp.output_stride * ix.nr_dpus())
            bp.output.resize(bp.output_stride * ix.nr_dpus());
        st->pack_s = now_s() - t0;
    }
    if (st->bp.error_kind != BatchPlan::OK) st->set_error(st->bp.error_kind == BatchPlan::INPUT ? "input" : "plan", st->bp.error);
    return st;
}

double merge_batch(const std::shared_ptr<BatchState> &st, py::array_t<float, py::array::c_style> &out) {
    const PlanIndex &ix = st->packer->index();
    if (out.ndim() != 2 || out.shape(0) != st->bp.batch_size || out.shape(1) != ix.width())
        throw py::value_error("merge: out must be float32 [B, W] = [" + std::to_string(st->bp.batch_size) + ", " +
                              std::to_string(ix.width()) + "]");
    if (!st->err_kind.empty()) throw py::value_error("merge: this batch failed (" + st->err_msg + ")");
    if (st->bp.nr_launches > 0 && st->stage != BatchState::FINISHED)
        throw py::value_error("merge: the batch's launches have not finished (call finish first)");
    float *res = out.mutable_data();
    py::gil_scoped_release release;
    double t0 = now_s();
    st->packer->merge(st->bp, res);
    return now_s() - t0;
}

// The packer and merger of one plan without DPUs (benchmarks, Router checks).
class HostPacker {
  public:
    HostPacker(const py::dict &spec, uint32_t nr_dpus) : packer_(make_packer(spec, nr_dpus)) {}
    std::shared_ptr<BatchState> pack(py::array_t<int64_t, py::array::c_style | py::array::forcecast> indices,
                                     py::array_t<int64_t, py::array::c_style | py::array::forcecast> offsets,
                                     uint32_t batch_size, std::shared_ptr<BatchState> reuse) {
        auto st = reuse ? reuse : std::make_shared<BatchState>();
        if (st->running) throw py::value_error("pack: that batch is running");
        pack_batch(packer_, indices, offsets, batch_size, st);
        st->stage = BatchState::FINISHED;  // no DPUs: the output is whatever set_output wrote
        return st;
    }
    double merge(const std::shared_ptr<BatchState> &st, py::array_t<float, py::array::c_style> out) {
        return merge_batch(st, out);
    }
    std::string describe() const { return packer_->index().describe(); }
    // (group, local row) of each lookup as the PlanIndex maps it (checks, not a hot path).
    py::tuple map_rows(py::array_t<int64_t, py::array::c_style | py::array::forcecast> indices,
                       py::array_t<int64_t, py::array::c_style | py::array::forcecast> offsets, uint32_t batch_size) const {
        const PlanIndex &ix = packer_->index();
        const uint32_t T = ix.nr_tables();
        if (static_cast<uint64_t>(offsets.size()) != uint64_t(T) * batch_size + 1)
            throw py::value_error("map_rows: offsets must have T*B+1 entries");
        const int64_t *o = offsets.data(), *idx = indices.data();
        std::vector<uint32_t> g(indices.size()), l(indices.size());
        for (uint32_t t = 0; t < T; t++)
            for (int64_t i = o[uint64_t(t) * batch_size]; i < o[uint64_t(t + 1) * batch_size]; i++) {
                if (i < 0 || i >= indices.size() || static_cast<uint64_t>(idx[i]) >= ix.spec().table_rows[t])
                    throw py::value_error("map_rows: index " + std::to_string(i) + " out of range");
                ix.map(t, idx[i], g[i], l[i]);
            }
        return py::make_tuple(np_1d(g), np_1d(l));
    }
    uint64_t index_bytes() const { return packer_->index().index_bytes(); }
    unsigned threads_for(uint64_t n) const { return packer_->threads_for(n); }

  private:
    std::shared_ptr<Packer> packer_;
};

class Runtime {
  public:
    Runtime(const std::string &kernel_path, uint32_t nr_dpus, const std::string &profile) {
        char msg[512] = {0};
        int code;
        {
            py::gil_scoped_release release;
            code = updlrm_driver_open(kernel_path.c_str(), nr_dpus, profile.c_str(), &drv_, &open_seconds_, msg,
                                      sizeof(msg));
        }
        if (code != UPDLRM_DRV_OK) throw std::runtime_error(std::string("opening the DPUs: ") + msg);
        nr_dpus_ = nr_dpus;
    }
    ~Runtime() { close(); }

    void close() {
        // Holding the GIL while waiting is safe: a running batch holds mu_ only while it has
        // released the GIL, and gives mu_ back before taking the GIL again.
        std::unique_lock<std::mutex> lock(mu_);
        if (drv_ != nullptr) {
            updlrm_driver_close(drv_);  // syncs a launch that is still running
            drv_ = nullptr;
        }
        busy_ = false;
        cv_.notify_all();
    }
    bool closed() const { return drv_ == nullptr; }
    uint32_t nr_dpus() const { return nr_dpus_; }
    double open_seconds() const { return open_seconds_; }

    // data: one uint8 array per DPU (MRAM heap + 0 onwards, length a multiple of 8);
    // shards: per-shard arrays [S] "dpu", "local" (descriptor index on that DPU), "mram_offset",
    // "nr_rows", "nr_cols", "row_bytes", "table", plus "dtype" (UPDLRM_DTYPE_*). The descriptors
    // (struct updlrm_shard) are filled here, so their layout comes from updlrm_abi.h alone.
    // Returns the seconds the writes took.
    double write_shards(const py::list &data, const py::dict &shards) {
        check_open();
        if (data.size() != nr_dpus_)
            throw py::value_error("write_shards: " + std::to_string(data.size()) + " data buffers for " +
                                  std::to_string(nr_dpus_) + " DPUs");
        std::vector<updlrm_shard> descs;
        uint32_t stride = shard_descriptors(shards, descs);
        std::vector<py::array_t<uint8_t, py::array::c_style>> keep;
        std::vector<const void *> ptrs(nr_dpus_);
        std::vector<uint64_t> sizes(nr_dpus_);
        for (uint32_t d = 0; d < nr_dpus_; d++) {
            auto a = py::array_t<uint8_t, py::array::c_style>::ensure(data[d]);
            if (!a) throw py::value_error("write_shards: data[" + std::to_string(d) + "] is not a uint8 array");
            ptrs[d] = a.data();
            sizes[d] = static_cast<uint64_t>(a.size());
            keep.push_back(std::move(a));
        }
        char msg[512] = {0};
        double seconds = 0;
        int code;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mu_);
            code = drv_ == nullptr ? -1
                                   : updlrm_driver_write_shards(drv_, ptrs.data(), sizes.data(), descs.data(), stride,
                                                                &seconds, msg, sizeof(msg));
        }
        if (code == -1) throw std::runtime_error("the DPU runtime is closed");
        if (code != UPDLRM_DRV_OK) throw std::runtime_error(std::string("writing shards: ") + msg);
        return seconds;
    }

    // Builds the MRAM images of the shards from `weights` window by window (updlrm/pim/layout.py's
    // image_spec; threads over DPUs) and writes them and the descriptors (`shards`, as for
    // write_shards). Returns {"seconds": all of it, "build_s": building the windows, "bytes": image
    // bytes}; load_progress reports (bytes done, bytes in all) meanwhile, from any thread.
    py::dict load_tables(const py::list &weights, const py::dict &image, const py::dict &shards) {
        check_open();
        auto src = updlrm::load_source(weights, image, nr_dpus_);
        std::vector<updlrm_shard> descs;
        uint32_t stride = shard_descriptors(shards, descs);
        updlrm::FillJob job{src->images.get(), updlrm::load_threads(), &load_done_};
        load_done_ = 0;
        load_total_ = src->images->total_bytes();
        char msg[512] = {0};
        double seconds = 0;
        int code;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mu_);
            code = drv_ == nullptr ? -1
                                   : updlrm_driver_write_shards_with(drv_, src->images->data_bytes().data(),
                                                                     updlrm::fill_window, &job, descs.data(), stride,
                                                                     &seconds, msg, sizeof(msg));
        }
        if (code == -1) throw std::runtime_error("the DPU runtime is closed");
        if (code != UPDLRM_DRV_OK) throw std::runtime_error(std::string("writing shards: ") + msg);
        py::dict r;
        r["seconds"] = seconds;
        r["build_s"] = job.fill_seconds;
        r["bytes"] = src->images->total_bytes();
        return r;
    }
    py::tuple load_progress() const { return py::make_tuple(load_done_.load(), load_total_.load()); }

    void set_plan(const py::dict &d) {
        auto packer = make_packer(d, nr_dpus_);
        std::lock_guard<std::mutex> lock(mu_);  // GIL held: see close()
        packer_ = std::move(packer);
    }

    std::shared_ptr<BatchState> pack(py::array_t<int64_t, py::array::c_style | py::array::forcecast> indices,
                                     py::array_t<int64_t, py::array::c_style | py::array::forcecast> offsets,
                                     uint32_t batch_size) {
        std::shared_ptr<Packer> packer = packer_;  // copied under the GIL: set_plan may replace packer_
        if (!packer) throw py::value_error("pack: set_plan() was not called");
        return pack_batch(packer, indices, offsets, batch_size, take_state());
    }

    // Push + asynchronous launch of the batch's first launch; returns while the DPUs run. Waits
    // (GIL released) while another batch is between start and finish.
    void start(const std::shared_ptr<BatchState> &st) {
        check_open();
        if (st->stage != BatchState::PACKED)
            throw py::value_error("start: this batch is not freshly packed (state " + std::to_string(st->stage) + ")");
        {
            py::gil_scoped_release release;
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return !busy_ || drv_ == nullptr; });
            st->stage = BatchState::STARTED;
            if (drv_ == nullptr) {
                st->set_error("native", "the DPU runtime was closed");
                return;
            }
            if (st->bp.error_kind != BatchPlan::OK || st->bp.nr_launches == 0) return;
            busy_ = true;
            if (!launch_first(*st)) {
                busy_ = false;
                cv_.notify_all();
            }
        }
    }

    // Waits for the batch's launch, reads status and partial sums, runs any further launches.
    py::dict finish(const std::shared_ptr<BatchState> &st) {
        if (st->stage != BatchState::STARTED) throw py::value_error("finish: start() was not called for this batch");
        {
            py::gil_scoped_release release;
            std::unique_lock<std::mutex> lock(mu_);
            st->stage = BatchState::FINISHED;
            if (st->running && drv_ == nullptr) {  // closed under a running batch (close() synced it)
                st->running = false;
                st->set_error("native", "the DPU runtime was closed while this batch ran");
            } else if (st->running) {
                complete(*st);
                busy_ = false;
                cv_.notify_all();
            }
        }
        return st->result(nr_dpus_);
    }

    double merge(const std::shared_ptr<BatchState> &st, py::array_t<float, py::array::c_style> out) {
        return merge_batch(st, out);
    }

    // Returns a finished batch's buffers for reuse by later batches.
    void give_back(const std::shared_ptr<BatchState> &st) {
        std::lock_guard<std::mutex> lock(pool_mu_);
        if (pool_.size() < 4 && st->stage != BatchState::STARTED) pool_.push_back(st);
    }

  private:
    // Fills descs ([nr_dpus][stride], zeroed) from the per-shard arrays of write_shards; returns
    // stride = the most shards on one DPU (at least 1). ValueError names the bad shard.
    uint32_t shard_descriptors(const py::dict &d, std::vector<updlrm_shard> &descs) const {
        auto dpu = to_vec<uint32_t>(d, "dpu");
        auto local = to_vec<uint32_t>(d, "local");
        auto off = to_vec<uint32_t>(d, "mram_offset");
        auto rows = to_vec<uint32_t>(d, "nr_rows");
        auto cols = to_vec<uint32_t>(d, "nr_cols");
        auto rb = to_vec<uint32_t>(d, "row_bytes");
        auto table = to_vec<uint32_t>(d, "table");
        if (!d.contains("dtype")) throw py::value_error("shard spec lacks 'dtype'");
        uint32_t dtype = d["dtype"].cast<uint32_t>();
        if (UPDLRM_DTYPE_BYTES(dtype) == 0)
            throw py::value_error("write_shards: dtype " + std::to_string(dtype) + " is not one of UPDLRM_DTYPE_* (0.." +
                                  std::to_string(UPDLRM_NR_DTYPES - 1) + ")");
        size_t ns = dpu.size();
        for (const auto *v : {&local, &off, &rows, &cols, &rb, &table})
            if (v->size() != ns) throw py::value_error("write_shards: per-shard arrays differ in length");
        uint32_t stride = 1;
        for (size_t i = 0; i < ns; i++) {
            if (dpu[i] >= nr_dpus_)
                throw py::value_error("write_shards: shard " + std::to_string(i) + " on DPU " + std::to_string(dpu[i]) +
                                      ", allowed 0.." + std::to_string(nr_dpus_ - 1));
            if (local[i] >= UPDLRM_MAX_SHARDS)
                throw py::value_error("write_shards: shard " + std::to_string(i) + " has descriptor index " +
                                      std::to_string(local[i]) + ", allowed 0.." + std::to_string(UPDLRM_MAX_SHARDS - 1));
            if (local[i] + 1 > stride) stride = local[i] + 1;
        }
        descs.assign(size_t(nr_dpus_) * stride, updlrm_shard{});
        std::vector<uint8_t> used(descs.size(), 0);
        for (size_t i = 0; i < ns; i++) {
            size_t k = size_t(dpu[i]) * stride + local[i];
            if (used[k]++)
                throw py::value_error("write_shards: shard " + std::to_string(i) + " repeats descriptor " +
                                      std::to_string(local[i]) + " of DPU " + std::to_string(dpu[i]));
            updlrm_shard &s = descs[k];
            s.mram_offset = off[i];
            s.nr_rows = rows[i];
            s.nr_cols = cols[i];
            s.row_bytes = rb[i];
            s.dtype = dtype;
            s.table = table[i];
        }
        return stride;
    }

    void check_open() const {
        if (drv_ == nullptr) throw std::runtime_error("the DPU runtime is closed");
    }

    std::shared_ptr<BatchState> take_state() {
        std::lock_guard<std::mutex> lock(pool_mu_);
        if (pool_.empty()) return std::make_shared<BatchState>();
        auto st = pool_.back();
        pool_.pop_back();
        return st;
    }

    // Pushes and starts launch st.next (mu_ held). False when it failed (error recorded).
    bool launch_first(BatchState &st) {
        const Launch &L = st.bp.launches[st.next];
        const PlanSpec &spec = st.packer->index().spec();
        updlrm_launch_times t{};
        char msg[512] = {0};
        int code = updlrm_driver_push(drv_, L.args.data(), L.request.data(), L.request_stride, spec.request_offset,
                                      L.request_stride, &t, msg, sizeof(msg));
        st.c2d_s += t.cpu_to_dpu_s;
        st.push_bytes.push_back(t.request_push_bytes);
        if (code == UPDLRM_DRV_OK) code = updlrm_driver_launch_async(drv_, &st.fault, msg, sizeof(msg));
        if (code != UPDLRM_DRV_OK) {
            st.drv_error(code, msg);
            return false;
        }
        st.running = true;
        return true;
    }

    // Waits for the running launch, pulls it, and runs the batch's remaining launches (mu_ held).
    void complete(BatchState &st) {
        const PlanSpec &spec = st.packer->index().spec();
        const uint32_t N = nr_dpus_;
        std::vector<updlrm_status> status(N);
        BatchPlan &bp = st.bp;
        const bool multi = bp.nr_launches > 1;
        if (bp.output.size() < bp.output_stride * N) bp.output.resize(bp.output_stride * N);
        while (st.running) {
            const Launch &L = bp.launches[st.next];
            updlrm_launch_times t{};
            char msg[512] = {0};
            int code = updlrm_driver_wait(drv_, status.data(), &t, &st.fault, msg, sizeof(msg));
            st.running = false;
            st.kernel_s += t.kernel_s;
            st.status_s += t.status_s;
            st.collect_counters(drv_, N);
            if (code != UPDLRM_DRV_OK) {
                st.drv_error(code, msg);
                return;
            }
            for (uint32_t d = 0; d < N; d++)
                for (size_t k = 0; k < UPDLRM_MAX_TASKLETS; k++) {
                    st.cycles.push_back(status[d].cycles[k]);
                    st.tl_lookups.push_back(status[d].lookups[k]);
                }
            uint8_t *dst = bp.output.data();
            size_t stride = bp.output_stride;
            if (multi) {
                if (bp.launch_output.size() < L.output_bytes * N) bp.launch_output.resize(L.output_bytes * N);
                dst = bp.launch_output.data();
                stride = L.output_bytes;
            }
            code = updlrm_driver_pull(drv_, dst, stride, spec.output_offset, L.output_bytes, &t, msg, sizeof(msg));
            st.d2c_s += t.dpu_to_cpu_s;
            st.pull_bytes.push_back(t.output_pull_bytes);
            if (code != UPDLRM_DRV_OK) {
                st.drv_error(code, msg);
                return;
            }
            if (multi) st.packer->gather_launch(bp, st.next, dst, stride);
            st.next++;
            if (st.next < bp.nr_launches && !launch_first(st)) return;
        }
    }

    std::mutex mu_;  // serializes DPU work, shard writes and close (the GIL is released meanwhile)
    std::condition_variable cv_;
    bool busy_ = false;  // a batch is between start() and finish()
    std::atomic<uint64_t> load_done_{0}, load_total_{0};  // image bytes of the running load_tables
    updlrm_driver *drv_ = nullptr;
    uint32_t nr_dpus_ = 0;
    double open_seconds_ = 0;
    std::shared_ptr<Packer> packer_;
    std::mutex pool_mu_;
    std::vector<std::shared_ptr<BatchState>> pool_;  // finished batches' buffers, reused
};

}  // namespace

PYBIND11_MODULE(UPDLRM_MODULE_NAME, m) {
    m.doc() = "updlrm PIM runtime: host driver (libdpu API) + request packer + result merger";
#ifdef UPDLRM_EMULATOR
    m.attr("EMULATOR") = true;
#else
    m.attr("EMULATOR") = false;
#endif
    m.attr("ABI_VERSION") = UPDLRM_ABI_VERSION;
#ifdef UPDLRM_SHIPPED_NR_TASKLETS
    m.attr("SHIPPED_NR_TASKLETS") = UPDLRM_SHIPPED_NR_TASKLETS;  // NR_TASKLETS of kernels/emb_lookup.*
#endif
    m.attr("MAX_TASKLETS") = UPDLRM_MAX_TASKLETS;
    m.attr("MAX_SHARDS") = UPDLRM_MAX_SHARDS;
    m.attr("MRAM_BYTES") = UPDLRM_MRAM_BYTES;
    // Sizes and codes of dpu_kernels/include/updlrm_abi.h, so that Python never retypes them.
    m.attr("LAUNCH_ARGS_BYTES") = sizeof(struct updlrm_launch_args);
    m.attr("STATUS_BYTES") = sizeof(struct updlrm_status);
    m.attr("SHARD_BYTES") = sizeof(struct updlrm_shard);
    m.attr("BAG_BYTES") = sizeof(struct updlrm_bag);
    m.attr("DTYPE_FP32") = UPDLRM_DTYPE_FP32;
    m.attr("DTYPE_INT32") = UPDLRM_DTYPE_INT32;
    m.attr("DTYPE_INT16") = UPDLRM_DTYPE_INT16;
    m.attr("DTYPE_INT8") = UPDLRM_DTYPE_INT8;
    m.attr("SUM_BYTES") = UPDLRM_SUM_BYTES;
    m.attr("ELEM_BYTES") = UPDLRM_ELEM_BYTES;
    m.attr("MRAM_ALIGN") = UPDLRM_MRAM_ALIGN;
    m.attr("MRAM_HEAP_SYMBOL") = DPU_MRAM_HEAP_POINTER_NAME;  // the MRAM heap's symbol for copies
    py::class_<BatchState, std::shared_ptr<BatchState>>(m, "PackedBatch")
        .def_property_readonly("error", [](const BatchState &st) -> py::object {
            if (st.err_kind.empty()) return py::none();
            py::dict e;
            e["kind"] = st.err_kind;
            e["message"] = st.err_msg;
            return std::move(e);
        })
        .def_property_readonly("batch_size", [](const BatchState &st) { return st.bp.batch_size; })
        .def_property_readonly("nr_launches", [](const BatchState &st) { return st.bp.nr_launches; })
        .def_property_readonly("pack_s", [](const BatchState &st) { return st.pack_s; })
        .def("result", [](const BatchState &st) {
            uint32_t n = st.packer ? st.packer->index().nr_dpus() : 0;
            return st.result(n);
        })
        .def("set_output", [](BatchState &st, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> data) {
            // HostPacker: the partial sums the DPUs would have pulled, [nr_dpus][output_stride] bytes
            if (static_cast<size_t>(data.size()) != st.bp.output.size())
                throw py::value_error("set_output: need " + std::to_string(st.bp.output.size()) + " bytes");
            std::memcpy(st.bp.output.data(), data.data(), st.bp.output.size());
        })
        .def_property_readonly("output_stride", [](const BatchState &st) { return st.bp.output_stride; })

        .def("requests", [](const BatchState &st) {
            // (launch args [L][N][8] uint32, request bytes per launch) - for tests
            py::list out;
            for (size_t l = 0; l < st.bp.nr_launches; l++) {
                const Launch &L = st.bp.launches[l];
                std::vector<uint32_t> a(L.args.size() * 8);
                std::memcpy(a.data(), L.args.data(), a.size() * 4);
                std::vector<uint8_t> req(L.request.data(), L.request.data() + L.request_stride * L.args.size());
                out.append(py::make_tuple(np_2d(a, L.args.size(), 8), np_2d(req, L.args.size(), L.request_stride)));
            }
            return out;
        });
    py::class_<HostPacker>(m, "HostPacker")
        .def(py::init<const py::dict &, uint32_t>(), py::arg("spec"), py::arg("nr_dpus"))
        .def("pack", &HostPacker::pack, py::arg("indices"), py::arg("offsets"), py::arg("batch_size"),
             py::arg("reuse") = std::shared_ptr<BatchState>())
        .def("merge", &HostPacker::merge, py::arg("batch"), py::arg("out"))
        .def("describe", &HostPacker::describe)
        .def("map_rows", &HostPacker::map_rows, py::arg("indices"), py::arg("offsets"), py::arg("batch_size"))
        .def_property_readonly("index_bytes", &HostPacker::index_bytes)
        .def("threads_for", &HostPacker::threads_for, py::arg("nr_lookups"));
    updlrm::register_loader(m);  // image_window, table_stats (loader.cpp)
    py::class_<Runtime>(m, "Runtime")
        .def(py::init<const std::string &, uint32_t, const std::string &>(), py::arg("kernel_path"), py::arg("nr_dpus"),
             py::arg("profile") = "")
        .def_property_readonly("nr_dpus", &Runtime::nr_dpus)
        .def_property_readonly("open_seconds", &Runtime::open_seconds)
        .def_property_readonly("closed", &Runtime::closed)
        .def("write_shards", &Runtime::write_shards, py::arg("data"), py::arg("shards"))
        .def("load_tables", &Runtime::load_tables, py::arg("weights"), py::arg("image"), py::arg("shards"))
        .def_property_readonly("load_progress", &Runtime::load_progress)
        .def("set_plan", &Runtime::set_plan, py::arg("spec"))
        .def("pack", &Runtime::pack, py::arg("indices"), py::arg("offsets"), py::arg("batch_size"))
        .def("start", &Runtime::start, py::arg("batch"))
        .def("finish", &Runtime::finish, py::arg("batch"))
        .def("merge", &Runtime::merge, py::arg("batch"), py::arg("out"))
        .def("give_back", &Runtime::give_back, py::arg("batch"))
        .def("close", &Runtime::close);
}
