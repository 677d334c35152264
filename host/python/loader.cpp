// loader.cpp - TableImages (see loader.h) and its Python side: the image spec dict that
// updlrm/pim/layout.py builds, the fill callback for updlrm_driver_write_shards_with, and two module
// functions (image_window for tests, table_stats for max|w| and the finite check in one pass).
#include "loader.h"
#include "packer.h"  // run_parts
#include "loader_py.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "updlrm_abi.h"

namespace updlrm {

namespace {

std::string shard_name(size_t i) { return "image spec: shard " + std::to_string(i); }

// q = rint(w * scale) clipped to +-limit, as numpy's clip(rint(w * scale)) (limit is an integer,
// so clipping first gives the same q). Adding and subtracting 1.5 * 2^52 rounds half to even in
// the default rounding mode, like rint, for |x| < 2^51; the loop vectorizes (nearbyint is a call).
template <class Q>
void store_fixed(const float *src, uint32_t n, const double *scale, double limit, uint8_t *out) {
    constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
    Q *q = reinterpret_cast<Q *>(out);              // row starts are 8-byte aligned in the image
    for (uint32_t c = 0; c < n; c++) {
        double x = double(src[c]) * scale[c];
        x = x > limit ? limit : (x < -limit ? -limit : x);
        q[c] = static_cast<Q>((x + kRound) - kRound);
    }
}

}  // namespace

uint32_t dtype_elem_bytes(uint32_t dtype) {
    switch (dtype) {
    case UPDLRM_DTYPE_FP32: return 4;
    case UPDLRM_DTYPE_INT32: return 4;
    case UPDLRM_DTYPE_INT16: return 2;
    case UPDLRM_DTYPE_INT8: return 1;
    default: return 0;
    }
}

unsigned load_threads() {
    const char *env = std::getenv("UPDLRM_HOST_THREADS");
    unsigned n = env != nullptr ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : 0u;
    if (n == 0) n = std::thread::hardware_concurrency();
    return std::max(1u, std::min(n, 16u));
}

TableImages::TableImages(std::vector<WeightTable> tables, std::vector<ImageShard> shards, uint32_t nr_dpus,
                         uint32_t dtype, std::vector<double> scales, double limit)
    : tables_(std::move(tables)), nr_dpus_(nr_dpus), dtype_(dtype), scales_(std::move(scales)), limit_(limit) {
    elem_bytes_ = dtype_elem_bytes(dtype);
    if (elem_bytes_ == 0) throw std::invalid_argument("image spec: dtype code " + std::to_string(dtype) + " is unknown");
    const bool fixed = dtype != UPDLRM_DTYPE_FP32;
    table_col_.assign(tables_.size() + 1, 0);  // scales are per result column (table t from table_col_[t])
    for (size_t t = 0; t < tables_.size(); t++) table_col_[t + 1] = table_col_[t] + tables_[t].dim;
    if (fixed && scales_.size() != table_col_.back())
        throw std::invalid_argument("image spec: " + std::to_string(scales_.size()) + " scales for " +
                                    std::to_string(table_col_.back()) + " result columns");
    for (size_t i = 0; i < shards.size(); i++) {
        const ImageShard &s = shards[i];
        if (s.dpu >= nr_dpus_)
            throw std::invalid_argument(shard_name(i) + " is on DPU " + std::to_string(s.dpu) + " of " +
                                        std::to_string(nr_dpus_));
        if (s.table >= tables_.size())
            throw std::invalid_argument(shard_name(i) + " names table " + std::to_string(s.table));
        const WeightTable &w = tables_[s.table];
        if (uint64_t(s.col_lo) + s.nr_cols > w.dim)
            throw std::invalid_argument(shard_name(i) + ": columns " + std::to_string(s.col_lo) + ".." +
                                        std::to_string(s.col_lo + s.nr_cols) + " exceed table dim " + std::to_string(w.dim));
        if (s.row_bytes % UPDLRM_MRAM_ALIGN != 0 || uint64_t(s.nr_cols) * elem_bytes_ > s.row_bytes ||
            s.mram_offset % UPDLRM_MRAM_ALIGN != 0)
            throw std::invalid_argument(shard_name(i) + ": row_bytes " + std::to_string(s.row_bytes) + " / mram_offset " +
                                        std::to_string(s.mram_offset) + " not multiples of 8 or too small for " +
                                        std::to_string(s.nr_cols) + " columns");
        if (s.mram_offset + s.nr_rows * s.row_bytes > UPDLRM_MRAM_BYTES)
            throw std::invalid_argument(shard_name(i) + " ends beyond the 64 MiB MRAM");
        if (s.rows == nullptr) {
            if (s.row_lo < 0 || uint64_t(s.row_lo) + s.nr_rows > w.nr_rows)
                throw std::invalid_argument(shard_name(i) + ": rows " + std::to_string(s.row_lo) + ".." +
                                            std::to_string(s.row_lo + int64_t(s.nr_rows)) + " outside table " +
                                            std::to_string(s.table) + "'s " + std::to_string(w.nr_rows) + " rows");
        } else {
            for (uint64_t r = 0; r < s.nr_rows; r++)
                if (s.rows[r] < 0 || uint64_t(s.rows[r]) >= w.nr_rows)
                    throw std::invalid_argument(shard_name(i) + ": row id " + std::to_string(s.rows[r]) + " outside table " +
                                                std::to_string(s.table) + "'s " + std::to_string(w.nr_rows) + " rows");
        }
    }
    std::stable_sort(shards.begin(), shards.end(), [](const ImageShard &a, const ImageShard &b) {
        return a.dpu != b.dpu ? a.dpu < b.dpu : a.mram_offset < b.mram_offset;
    });
    shards_ = std::move(shards);
    dpu_ptr_.assign(size_t(nr_dpus_) + 1, 0);
    data_bytes_.assign(nr_dpus_, 0);
    for (const ImageShard &s : shards_) dpu_ptr_[s.dpu + 1]++;
    for (uint32_t d = 0; d < nr_dpus_; d++) dpu_ptr_[d + 1] += dpu_ptr_[d];
    for (uint32_t d = 0; d < nr_dpus_; d++) {
        uint64_t end = 0;
        for (uint64_t k = dpu_ptr_[d]; k < dpu_ptr_[d + 1]; k++) {
            const ImageShard &s = shards_[k];
            if (s.mram_offset < end)
                throw std::invalid_argument("image spec: two shards overlap on DPU " + std::to_string(d) + " at byte " +
                                            std::to_string(s.mram_offset));
            end = s.mram_offset + s.nr_rows * s.row_bytes;
        }
        data_bytes_[d] = end;
        total_bytes_ += end;
    }
}

void TableImages::put_rows(const ImageShard &s, uint64_t r0, uint64_t r1, uint8_t *out) const {
    const WeightTable &w = tables_[s.table];
    const size_t used = size_t(s.nr_cols) * elem_bytes_;
    if (s.rows == nullptr && dtype_ == UPDLRM_DTYPE_FP32 && s.nr_cols == w.dim && used == s.row_bytes) {
        // whole rows of a row range, no padding: the image is the table's bytes
        std::memcpy(out, w.data + (uint64_t(s.row_lo) + r0) * w.dim, size_t(r1 - r0) * s.row_bytes);
        return;
    }
    const double *scale = dtype_ != UPDLRM_DTYPE_FP32 ? scales_.data() + table_col_[s.table] + s.col_lo : nullptr;
    for (uint64_t r = r0; r < r1; r++, out += s.row_bytes) {
        uint64_t row;
        if (s.rows != nullptr) {
            row = uint64_t(s.rows[r]);
            if (r + 8 < r1) __builtin_prefetch(w.data + uint64_t(s.rows[r + 8]) * w.dim + s.col_lo);  // random gathers
        } else {
            row = uint64_t(s.row_lo) + r;
        }
        const float *src = w.data + row * w.dim + s.col_lo;
        switch (dtype_) {
        case UPDLRM_DTYPE_FP32: std::memcpy(out, src, used); break;
        case UPDLRM_DTYPE_INT32: store_fixed<int32_t>(src, s.nr_cols, scale, limit_, out); break;
        case UPDLRM_DTYPE_INT16: store_fixed<int16_t>(src, s.nr_cols, scale, limit_, out); break;
        case UPDLRM_DTYPE_INT8: store_fixed<int8_t>(src, s.nr_cols, scale, limit_, out); break;
        default: break;  // rejected by the constructor
        }
        if (used < s.row_bytes) std::memset(out + used, 0, s.row_bytes - used);
    }
}

void TableImages::fill_dpu(uint32_t d, uint64_t off, uint64_t len, uint8_t *dst) const {
    const uint64_t lo = off, hi = off + len;
    uint64_t zeroed_to = lo;  // [lo, zeroed_to) is written; gaps between shards get zeros
    // first shard of d ending after the window starts
    auto first = std::partition_point(shards_.begin() + dpu_ptr_[d], shards_.begin() + dpu_ptr_[d + 1],
                                      [lo](const ImageShard &s) { return s.mram_offset + s.nr_rows * s.row_bytes <= lo; });
    std::vector<uint8_t> tmp;
    auto cut_row = [&](const ImageShard &s, uint64_t r) {  // a row cut by the window's edge
        const uint64_t rs = s.mram_offset + r * s.row_bytes, re = rs + s.row_bytes;
        tmp.resize(s.row_bytes);
        put_rows(s, r, r + 1, tmp.data());
        const uint64_t ca = std::max(rs, lo), cb = std::min(re, hi);
        std::memcpy(dst + (ca - lo), tmp.data() + (ca - rs), cb - ca);
    };
    for (auto it = first; it != shards_.begin() + dpu_ptr_[d + 1] && it->mram_offset < hi; ++it) {
        const ImageShard &s = *it;
        const uint64_t a = std::max(lo, s.mram_offset);
        const uint64_t b = std::min(hi, s.mram_offset + s.nr_rows * s.row_bytes);
        if (a > zeroed_to) std::memset(dst + (zeroed_to - lo), 0, a - zeroed_to);
        zeroed_to = b;
        const uint64_t r0 = (a - s.mram_offset) / s.row_bytes;                     // first row touched
        const uint64_t r1 = (b - s.mram_offset + s.row_bytes - 1) / s.row_bytes;   // past the last touched
        const uint64_t f0 = (a - s.mram_offset + s.row_bytes - 1) / s.row_bytes;   // first whole row
        const uint64_t f1 = std::max(f0, (b - s.mram_offset) / s.row_bytes);       // past the last whole row
        if (r0 < f0) cut_row(s, r0);
        if (f0 < f1) put_rows(s, f0, f1, dst + (s.mram_offset + f0 * s.row_bytes - lo));
        if (f1 < r1) cut_row(s, f1);  // f1 >= f0 > r0 when r0 was cut: never the same row twice
    }
    if (hi > zeroed_to) std::memset(dst + (zeroed_to - lo), 0, hi - zeroed_to);
}

void TableImages::fill(uint64_t off, uint64_t len, uint32_t nr, const uint32_t *dpus, uint8_t *dst, unsigned threads,
                       std::atomic<uint64_t> *progress) const {
    for (uint32_t k = 0; k < nr; k++)
        if (dpus[k] >= nr_dpus_) throw std::invalid_argument("fill: DPU " + std::to_string(dpus[k]) + " out of range");
    const unsigned parts = std::max(1u, std::min(threads, nr));
    run_parts(parts, [&](unsigned p) {
        const uint32_t k0 = uint32_t(uint64_t(nr) * p / parts), k1 = uint32_t(uint64_t(nr) * (p + 1) / parts);
        uint64_t written = 0;
        for (uint32_t k = k0; k < k1; k++) {
            const uint32_t d = dpus[k];
            fill_dpu(d, off, len, dst + size_t(k) * len);
            if (data_bytes_[d] > off) written += std::min(len, data_bytes_[d] - off);
        }
        if (progress != nullptr) progress->fetch_add(written, std::memory_order_relaxed);
    });
}

// ---- Python side ----------------------------------------------------------------------------

namespace {

template <typename T>
py::array_t<T, py::array::c_style> spec_array(const py::dict &d, const char *key, size_t n) {
    if (!d.contains(key)) throw py::value_error(std::string("image spec lacks '") + key + "'");
    auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(d[key]);
    if (!a) throw py::value_error(std::string("image spec '") + key + "' is not an array");
    if (n != size_t(-1) && size_t(a.size()) != n)
        throw py::value_error(std::string("image spec '") + key + "' has " + std::to_string(a.size()) +
                              " entries, expected " + std::to_string(n));
    return a;
}

}  // namespace

std::unique_ptr<LoadSource> load_source(const py::list &weights, const py::dict &spec, uint32_t nr_dpus) {
    auto src = std::make_unique<LoadSource>();
    std::vector<WeightTable> tables;
    for (size_t t = 0; t < weights.size(); t++) {
        auto w = py::array_t<float, py::array::c_style>::ensure(weights[t]);
        if (!w || w.ndim() != 2)
            throw py::value_error("weights[" + std::to_string(t) + "] must be a C-contiguous float32 [rows, dim] array");
        tables.push_back({w.data(), uint64_t(w.shape(0)), uint32_t(w.shape(1))});
        src->keep.push_back(std::move(w));
    }
    auto dpu = spec_array<uint32_t>(spec, "dpu", size_t(-1));
    const size_t S = size_t(dpu.size());
    auto table = spec_array<uint32_t>(spec, "table", S);
    auto col_lo = spec_array<uint32_t>(spec, "col_lo", S);
    auto nr_cols = spec_array<uint32_t>(spec, "nr_cols", S);
    auto row_bytes = spec_array<uint32_t>(spec, "row_bytes", S);
    auto mram_offset = spec_array<uint64_t>(spec, "mram_offset", S);
    auto nr_rows = spec_array<uint64_t>(spec, "nr_rows", S);
    auto row_lo = spec_array<int64_t>(spec, "row_lo", S);
    auto rows_at = spec_array<int64_t>(spec, "rows_at", S);
    auto rows = spec_array<int64_t>(spec, "rows", size_t(-1));
    auto scales = spec_array<double>(spec, "scales", size_t(-1));
    if (!spec.contains("dtype") || !spec.contains("limit")) throw py::value_error("image spec lacks 'dtype' or 'limit'");
    std::vector<ImageShard> shards(S);
    for (size_t i = 0; i < S; i++) {
        ImageShard &s = shards[i];
        s.dpu = dpu.data()[i];
        s.table = table.data()[i];
        s.col_lo = col_lo.data()[i];
        s.nr_cols = nr_cols.data()[i];
        s.row_bytes = row_bytes.data()[i];
        s.mram_offset = mram_offset.data()[i];
        s.nr_rows = nr_rows.data()[i];
        s.row_lo = row_lo.data()[i];
        const int64_t at = rows_at.data()[i];
        if (at >= 0) {
            if (uint64_t(at) + s.nr_rows > uint64_t(rows.size()))
                throw py::value_error(shard_name(i) + ": rows_at " + std::to_string(at) + " + " + std::to_string(s.nr_rows) +
                                      " rows exceed the " + std::to_string(rows.size()) + " row ids");
            s.rows = rows.data() + at;
        }
    }
    std::vector<double> sc(scales.data(), scales.data() + scales.size());
    try {
        src->images = std::make_unique<TableImages>(std::move(tables), std::move(shards), nr_dpus,
                                                    spec["dtype"].cast<uint32_t>(), std::move(sc),
                                                    spec["limit"].cast<double>());
    } catch (const std::invalid_argument &e) {
        throw py::value_error(e.what());
    }
    src->keep.push_back(std::move(rows));
    return src;
}

int fill_window(void *ctx, uint64_t offset, uint64_t length, uint32_t nr, const uint32_t *dpus, uint8_t *dst,
                char *msg, size_t msg_len) {
    FillJob *job = static_cast<FillJob *>(ctx);
    try {
        const auto t0 = std::chrono::steady_clock::now();
        job->images->fill(offset, length, nr, dpus, dst, job->threads, job->progress);
        job->fill_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return 0;
    } catch (const std::exception &e) {  // e.g. std::bad_alloc from a thread's scratch row
        std::snprintf(msg, msg_len, "building MRAM images at byte %llu: %s", (unsigned long long)offset, e.what());
        return 1;
    }
}

void register_loader(py::module_ &m) {
    m.def(
        "image_window",
        [](const py::list &weights, const py::dict &spec, uint32_t nr_dpus, uint64_t offset, uint64_t length) {
            auto src = load_source(weights, spec, nr_dpus);
            py::array_t<uint8_t> out({size_t(nr_dpus), size_t(length)});
            std::vector<uint32_t> all(nr_dpus);
            for (uint32_t d = 0; d < nr_dpus; d++) all[d] = d;
            {
                py::gil_scoped_release release;
                src->images->fill(offset, length, nr_dpus, all.data(), out.mutable_data(), load_threads(), nullptr);
            }
            return out;
        },
        py::arg("weights"), py::arg("spec"), py::arg("nr_dpus"), py::arg("offset"), py::arg("length"),
        "Bytes [offset, offset+length) of every DPU's MRAM image under an image spec: uint8 [nr_dpus, length].");
    m.def(
        "table_stats",
        [](const py::list &weights) {
            const size_t T = weights.size();
            std::vector<py::array_t<float, py::array::c_style>> ws;
            for (size_t t = 0; t < T; t++) {
                auto w = py::array_t<float, py::array::c_style>::ensure(weights[t]);
                if (!w) throw py::value_error("weights[" + std::to_string(t) + "] must be a C-contiguous float32 array");
                ws.push_back(std::move(w));
            }
            py::array_t<double> max_abs(T);
            py::array_t<bool> finite(T);
            std::vector<double> mx(T, 0.0);
            std::vector<uint8_t> ok(T, 1);
            {
                py::gil_scoped_release release;
                for (size_t t = 0; t < T; t++) {
                    const float *p = ws[t].data();
                    const size_t n = size_t(ws[t].size());
                    const unsigned parts = n < (1u << 20) ? 1u : load_threads();
                    // On the bits: |w| is bits & 0x7fffffff, ordered as the floats for finite
                    // values, and a NaN or an infinity is exactly a |bits| >= 0x7f800000; an integer
                    // max over the bits gives both and vectorizes.
                    std::vector<uint32_t> pm(parts, 0u);
                    run_parts(parts, [&](unsigned k) {
                        const size_t a = n * k / parts, b = n * (k + 1) / parts;
                        uint32_t m = 0;
                        for (size_t i = a; i < b; i++) {
                            uint32_t bits;
                            std::memcpy(&bits, p + i, 4);
                            m = std::max(m, bits & 0x7fffffffu);
                        }
                        pm[k] = m;
                    });
                    uint32_t m = *std::max_element(pm.begin(), pm.end());
                    if (m >= 0x7f800000u) {
                        ok[t] = 0;
                    } else {
                        float f;
                        std::memcpy(&f, &m, 4);
                        mx[t] = double(f);
                    }
                }
            }
            for (size_t t = 0; t < T; t++) {
                max_abs.mutable_data()[t] = mx[t];
                finite.mutable_data()[t] = ok[t] != 0;
            }
            return py::make_tuple(max_abs, finite);
        },
        py::arg("weights"),
        "(max |w| per table float64 [T], every element finite bool [T]) of float32 tables, in one pass.");
}

}  // namespace updlrm
