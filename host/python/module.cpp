// module.cpp - the pybind11 module of the PIM backend: `updlrm._native._emu` (host driver linked
// with the emulator) or `updlrm._native._sdk` (the same driver linked with the UPMEM SDK's libdpu).
//
// One class, Runtime: DPU set + loaded kernel + the packer/merger of one plan. Python
// (updlrm/pim/) maps lookups to (group, local row) with numpy and calls Runtime.lookup(), which
// packs, launches (as many launches as the plan's capacities need), merges and returns timings
// and counters - with the GIL released throughout. Errors of a launch come back as a dict
// {"kind", "message", "dpu", "tasklet", "reason", ...} so that Python raises the right exception;
// argument errors raise ValueError. Nothing here exits the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
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
using updlrm::Launch;
using updlrm::PackCounters;
using updlrm::Packer;
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
        std::lock_guard<std::mutex> lock(mu_);
        if (drv_ != nullptr) {
            updlrm_driver_close(drv_);
            drv_ = nullptr;
        }
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
        PlanSpec s;
        s.nr_dpus = nr_dpus_;
        s.nr_tables = d["nr_tables"].cast<uint32_t>();
        s.width = d["width"].cast<uint32_t>();
        s.dtype = d["dtype"].cast<uint32_t>();
        s.shard_dpu = to_vec<uint32_t>(d, "shard_dpu");
        s.shard_local = to_vec<uint32_t>(d, "shard_local");
        s.shard_col = to_vec<uint32_t>(d, "shard_col");
        s.shard_ncols = to_vec<uint32_t>(d, "shard_ncols");
        s.shard_row_bytes = to_vec<uint32_t>(d, "shard_row_bytes");
        s.shard_table = to_vec<uint32_t>(d, "shard_table");
        s.group_rep_ptr = to_vec<uint32_t>(d, "group_rep_ptr");
        s.rep_shard_ptr = to_vec<uint32_t>(d, "rep_shard_ptr");
        s.rep_shards = to_vec<uint32_t>(d, "rep_shards");
        s.nr_shards_on_dpu = to_vec<uint32_t>(d, "nr_shards_on_dpu");
        s.col_scale = to_vec<double>(d, "col_scale");
        s.request_offset = d["request_offset"].cast<uint32_t>();
        s.request_capacity = d["request_capacity"].cast<uint32_t>();
        s.output_offset = d["output_offset"].cast<uint32_t>();
        s.output_capacity = d["output_capacity"].cast<uint32_t>();
        size_t ns = s.shard_dpu.size();
        for (const auto *v : {&s.shard_local, &s.shard_col, &s.shard_ncols, &s.shard_row_bytes, &s.shard_table})
            if (v->size() != ns) throw py::value_error("plan spec: per-shard arrays differ in length");
        for (size_t i = 0; i < ns; i++) {
            if (s.shard_dpu[i] >= nr_dpus_) throw py::value_error("plan spec: shard " + std::to_string(i) + " on DPU " +
                                                                  std::to_string(s.shard_dpu[i]) + " >= nr_dpus");
            if (uint64_t(s.shard_col[i]) + s.shard_ncols[i] > s.width)
                throw py::value_error("plan spec: shard " + std::to_string(i) + " columns exceed the result width");
        }
        if (s.group_rep_ptr.empty() || s.rep_shard_ptr.empty() || s.group_rep_ptr.back() + 1 != s.rep_shard_ptr.size() ||
            s.rep_shard_ptr.back() != s.rep_shards.size())
            throw py::value_error("plan spec: inconsistent group/replica/shard pointers");
        for (uint32_t x : s.rep_shards)
            if (x >= ns) throw py::value_error("plan spec: replica names shard " + std::to_string(x));
        if (s.nr_shards_on_dpu.size() != nr_dpus_) throw py::value_error("plan spec: nr_shards_on_dpu length");
        uint64_t total = 0;
        for (uint32_t c : s.nr_shards_on_dpu) total += c;
        if (total != ns) throw py::value_error("plan spec: nr_shards_on_dpu does not sum to the shard count");
        std::vector<uint8_t> seen(ns, 0);
        std::vector<uint64_t> base(nr_dpus_ + 1, 0);
        for (uint32_t d = 0; d < nr_dpus_; d++) base[d + 1] = base[d] + s.nr_shards_on_dpu[d];
        for (size_t i = 0; i < ns; i++) {
            if (s.shard_local[i] >= s.nr_shards_on_dpu[s.shard_dpu[i]] || seen[base[s.shard_dpu[i]] + s.shard_local[i]]++)
                throw py::value_error("plan spec: shard " + std::to_string(i) + " has a bad or repeated descriptor index");
        }
        if (s.dtype == UPDLRM_DTYPE_INT32 && s.col_scale.size() != s.width)
            throw py::value_error("plan spec: col_scale must have one entry per result column");
        auto packer = std::make_shared<Packer>(std::move(s));
        std::lock_guard<std::mutex> lock(mu_);  // GIL held: see close()
        packer_ = std::move(packer);
    }

    // grp int32 [N], lrow uint32 [N], offsets int64 [T*B+1], out float32 [B, W] (overwritten).
    py::dict lookup(py::array_t<int32_t, py::array::c_style> grp, py::array_t<uint32_t, py::array::c_style> lrow,
                    py::array_t<int64_t, py::array::c_style> offsets, uint32_t batch_size,
                    py::array_t<float, py::array::c_style> out) {
        check_open();
        std::shared_ptr<Packer> packer = packer_;  // copied under the GIL: set_plan may replace packer_
        if (!packer) throw py::value_error("lookup: set_plan() was not called");
        const PlanSpec &spec = packer->spec();
        if (static_cast<uint64_t>(offsets.size()) != uint64_t(spec.nr_tables) * batch_size + 1)
            throw py::value_error("lookup: offsets has " + std::to_string(offsets.size()) + " entries, expected T*B+1 = " +
                                  std::to_string(uint64_t(spec.nr_tables) * batch_size + 1));
        int64_t n = offsets.data()[offsets.size() - 1];
        if (grp.size() != n || lrow.size() != n)
            throw py::value_error("lookup: grp/lrow must have offsets[-1] = " + std::to_string(n) + " entries");
        if (out.ndim() != 2 || out.shape(0) != batch_size || out.shape(1) != spec.width)
            throw py::value_error("lookup: out must be float32 [B, W]");

        const int32_t *g = grp.data();
        const uint32_t *l = lrow.data();
        const int64_t *o = offsets.data();
        float *res = out.mutable_data();
        const uint32_t N = nr_dpus_;
        const size_t T = UPDLRM_MAX_TASKLETS;

        std::string err_kind, err_msg, err_reason;
        updlrm_fault fault{};
        fault.dpu = fault.tasklet = -1;
        double pack_s = 0, c2d_s = 0, kernel_s = 0, status_s = 0, d2c_s = 0, merge_s = 0;
        std::vector<uint64_t> push_bytes, pull_bytes;
        PackCounters pc;
        // Per launch: [L][N][T] DMA and kernel figures, [L][N] emulator wall/modeled cycles.
        std::vector<uint64_t> rd_ops, rd_bytes, wr_ops, wr_bytes, cycles, tl_lookups;
        std::vector<uint64_t> emu_wall_ns, modeled_cycles, wram_static, wram_heap;
        size_t nr_launches = 0;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mu_);  // one batch at a time per DPU set
            if (drv_ == nullptr) {
                err_kind = "native";
                err_msg = "the DPU runtime was closed";
            } else {
            double t0 = now_s();
            std::vector<Launch> &launches = launches_;
            size_t nr_packed = 0;
            std::string perr = packer->pack(g, l, o, batch_size, launches, nr_packed, pc);
            pack_s = now_s() - t0;
            if (!perr.empty()) {
                err_kind = "pack";
                err_msg = perr;
            }
            nr_launches = nr_packed;
            double m0 = now_s();
            const unsigned mthreads = packer->threads_for(uint64_t(batch_size) * spec.width);
            std::vector<int64_t> &acc = acc_;  // reused between batches (no page faults)
            if (spec.dtype == UPDLRM_DTYPE_INT32) acc.resize(size_t(batch_size) * spec.width);
            else acc.clear();
            packer->clear(res, acc.empty() ? nullptr : acc.data(), batch_size, mthreads);
            merge_s += now_s() - m0;
            std::vector<updlrm_status> status(N);
            std::vector<uint8_t> &output = output_;
#ifdef UPDLRM_EMULATOR
            std::vector<dpu_emu_counters> ec(N);
#endif
            for (size_t li = 0; li < nr_packed && err_kind.empty(); li++) {
                const Launch &L = launches[li];
                size_t ostride = L.output_bytes;
                if (output.size() < ostride * N) output.resize(ostride * N);
                updlrm_launch_times times{};
                char msg[512] = {0};
                int code = updlrm_driver_launch(drv_, L.args.data(), L.request.data(), L.request_stride,
                                                spec.request_offset, L.request_stride, output.data(), ostride,
                                                spec.output_offset, L.output_bytes, status.data(), &times, &fault,
                                                msg, sizeof(msg));
                c2d_s += times.cpu_to_dpu_s;
                kernel_s += times.kernel_s;
                status_s += times.status_s;
                d2c_s += times.dpu_to_cpu_s;
                push_bytes.push_back(times.request_push_bytes);
                pull_bytes.push_back(times.output_pull_bytes);
#ifdef UPDLRM_EMULATOR
                if (updlrm_driver_emu_counters(drv_, ec.data(), nullptr, 0) == UPDLRM_DRV_OK) {
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
                }
#endif
                if (code != UPDLRM_DRV_OK) {
                    err_kind = code == UPDLRM_DRV_ERR_FAULT ? "fault" : code == UPDLRM_DRV_ERR_KERNEL ? "kernel" : "native";
                    err_msg = msg;
                    err_reason = fault.reason;
                    break;
                }
                for (uint32_t d = 0; d < N; d++)
                    for (size_t t = 0; t < T; t++) {
                        cycles.push_back(status[d].cycles[t]);
                        tl_lookups.push_back(status[d].lookups[t]);
                    }
                double m1 = now_s();
                packer->merge(L, output.data(), ostride, res, acc.empty() ? nullptr : acc.data(), batch_size, mthreads);
                merge_s += now_s() - m1;
            }
            if (err_kind.empty() && spec.dtype == UPDLRM_DTYPE_INT32) {
                double m2 = now_s();
                packer->finish_int32(acc.data(), batch_size, res, mthreads);
                merge_s += now_s() - m2;
            }
            }
        }
        py::dict r;
        r["pack_native_s"] = pack_s;
        r["cpu_to_dpu_s"] = c2d_s;
        r["kernel_s"] = kernel_s;
        r["status_s"] = status_s;
        r["dpu_to_cpu_s"] = d2c_s;
        r["merge_s"] = merge_s;
        r["nr_launches"] = nr_launches;
        r["request_push_bytes"] = push_bytes;
        r["output_pull_bytes"] = pull_bytes;
        // Per-launch arrays (leading axis = launch; only launches that ran have kernel figures).
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
        if (dtype != UPDLRM_DTYPE_FP32 && dtype != UPDLRM_DTYPE_INT32)
            throw py::value_error("write_shards: dtype " + std::to_string(dtype) + " is not UPDLRM_DTYPE_FP32 (" +
                                  std::to_string(UPDLRM_DTYPE_FP32) + ") or UPDLRM_DTYPE_INT32 (" +
                                  std::to_string(UPDLRM_DTYPE_INT32) + ")");
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
    std::mutex mu_;  // serializes batches, shard writes and close (the GIL is released meanwhile)
    std::atomic<uint64_t> load_done_{0}, load_total_{0};  // image bytes of the running load_tables
    updlrm_driver *drv_ = nullptr;
    uint32_t nr_dpus_ = 0;
    double open_seconds_ = 0;
    std::shared_ptr<Packer> packer_;
    std::vector<Launch> launches_;  // reused between batches
    std::vector<uint8_t> output_;   // partial sums of one launch, [nr_dpus][largest output]
    std::vector<int64_t> acc_;      // int32 plans: exact sums [B, W]
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
    m.attr("ELEM_BYTES") = UPDLRM_ELEM_BYTES;
    m.attr("MRAM_ALIGN") = UPDLRM_MRAM_ALIGN;
    m.attr("MRAM_HEAP_SYMBOL") = DPU_MRAM_HEAP_POINTER_NAME;  // the MRAM heap's symbol for copies
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
        .def("lookup", &Runtime::lookup, py::arg("grp"), py::arg("lrow"), py::arg("offsets"), py::arg("batch_size"),
             py::arg("out"))
        .def("close", &Runtime::close);
}
