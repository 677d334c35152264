"""Tests of updlrm.timing_model: it reproduces PrIM's published UPMEM microbenchmarks, is monotone
in the work it is given, validates its inputs, and loads/overrides its sourced constants.

References are the published figures (shared/UPMEM.md, PrIM, Gomez-Luna et al. 2022), not the
model's own earlier output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from updlrm.partition import Topology
from updlrm.stats import BatchStats
from updlrm.timing_model import (
    CONSTANT_NAMES,
    KernelCounters,
    TimingModel,
    TransferCounters,
    counters_from_dict,
    synthetic_kernel_counters,
)

CLOCK = 350e6  # PrIM's figures are at 350 MHz


@pytest.fixture(scope="module")
def model() -> TimingModel:
    return TimingModel.default()


def _busy_seconds(model: TimingModel, counters: KernelCounters) -> float:
    """Slowest DPU's modeled time without the fixed per-launch cost (a microbenchmark's loop)."""
    cycles = model.kernel_cycles(counters)["cycles"].max() - model.constants["kernel_fixed_cycles"]
    return float(cycles) / CLOCK


# ---- published microbenchmarks ----------------------------------------------------------------


@pytest.mark.parametrize("nr_tasklets", [1, 4, 11, 16])
def test_mram_read_bandwidth_2048B_matches_prim(model, nr_tasklets):
    # PrIM: sustained MRAM read bandwidth ~628 MB/s at 2,048-byte DMAs (350 MHz).
    reads = 2000
    k = synthetic_kernel_counters(1, nr_tasklets, reads_per_tasklet=reads, read_bytes_each=2048)
    bw = nr_tasklets * reads * 2048 / _busy_seconds(model, k)
    assert bw == pytest.approx(628e6, rel=0.10)


def test_mram_write_bandwidth_2048B_matches_prim(model):
    # PrIM: ~633 MB/s sustained MRAM write bandwidth at 2,048 bytes.
    k = synthetic_kernel_counters(1, 16, writes_per_tasklet=2000, write_bytes_each=2048)
    bw = 16 * 2000 * 2048 / _busy_seconds(model, k)
    assert bw == pytest.approx(633e6, rel=0.10)


def test_small_dma_bandwidth_is_latency_bound(model):
    # PrIM: one tasklet's 8-byte mram_read takes alpha + 8*beta ~ 81 cycles -> ~35 MB/s.
    k = synthetic_kernel_counters(1, 1, reads_per_tasklet=1000, read_bytes_each=8)
    bw = 1000 * 8 / _busy_seconds(model, k)
    assert bw == pytest.approx(8 * CLOCK / (77 + 4), rel=0.01)
    # many tasklets overlap part of the latency but stay far below the 2,048-byte bandwidth
    k16 = synthetic_kernel_counters(1, 16, reads_per_tasklet=1000, read_bytes_each=8)
    bw16 = 16 * 1000 * 8 / _busy_seconds(model, k16)
    assert bw < bw16 < 0.2 * 628e6


@pytest.mark.parametrize("dtype,published_mops", [("int32", 58.0), ("fp32", 4.9)])
@pytest.mark.parametrize("nr_tasklets", [11, 16])
def test_add_throughput_matches_prim(model, dtype, published_mops, nr_tasklets):
    # PrIM: per-DPU ADD throughput at >= 11 tasklets, 350 MHz: int32 ~58 MOPS, fp32 ~4.9 MOPS.
    n = 100_000
    k = synthetic_kernel_counters(1, nr_tasklets, dtype=dtype, lookups_per_tasklet=1, elements_per_lookup=n)
    # one modeled lookup (24 instructions) per tasklet is noise next to 100,000 adds
    ops_per_s = nr_tasklets * n / _busy_seconds(model, k)
    assert ops_per_s / 1e6 == pytest.approx(published_mops, rel=0.15)


def test_fp32_add_about_12x_slower_than_int32(model):
    ki = synthetic_kernel_counters(1, 16, dtype="int32", lookups_per_tasklet=1, elements_per_lookup=10_000)
    kf = synthetic_kernel_counters(1, 16, dtype="fp32", lookups_per_tasklet=1, elements_per_lookup=10_000)
    ratio = _busy_seconds(model, kf) / _busy_seconds(model, ki)
    assert 9.0 < ratio < 15.0


def test_throughput_scales_with_tasklets_up_to_11(model):
    # PrIM: throughput grows linearly with tasklets until the pipeline is full at 11.
    def mops(nt):
        k = synthetic_kernel_counters(1, nt, lookups_per_tasklet=1, elements_per_lookup=10_000)
        return nt * 10_000 / _busy_seconds(model, k)

    assert mops(2) == pytest.approx(2 * mops(1), rel=0.02)
    assert mops(8) == pytest.approx(8 * mops(1), rel=0.02)
    assert mops(11) == pytest.approx(11 * mops(1), rel=0.02)
    assert mops(16) == pytest.approx(mops(11), rel=0.02)


@pytest.mark.parametrize("direction,published", [("to_dpu", 6.68e9), ("from_dpu", 4.74e9)])
def test_rank_parallel_transfer_bandwidth_matches_prim(model, direction, published):
    # PrIM: one rank of 64 DPUs, parallel transfers of large buffers: CPU->DPU ~6.68 GB/s,
    # DPU->CPU ~4.74 GB/s.
    topo = Topology(nr_dpus=64)
    length = 32 << 20
    seconds = float(model.transfer_seconds(topo, np.array([length]), direction)[0])
    assert 64 * length / seconds == pytest.approx(published, rel=0.10)


@pytest.mark.parametrize("direction,published", [("to_dpu", 0.33e9), ("from_dpu", 0.12e9)])
def test_single_dpu_transfer_bandwidth_matches_prim(model, direction, published):
    # PrIM: serial transfers to / from one DPU: CPU->DPU ~0.33 GB/s, DPU->CPU ~0.12 GB/s.
    topo = Topology(nr_dpus=1)
    length = 32 << 20
    seconds = float(model.transfer_seconds(topo, np.array([length]), direction)[0])
    assert length / seconds == pytest.approx(published, rel=0.10)


def test_system_wide_small_transfer_is_fixed_cost_dominated(model):
    # Third-party push_xfer measurement (2,048 DPUs / 32 ranks): 1 KB per DPU sends at ~3.5 GiB/s,
    # receives at ~1.8 GiB/s; 512 KB per DPU at ~22.6 / ~11.0 GiB/s.
    topo = Topology(nr_dpus=2048)
    gib = float(1 << 30)

    def rate(kb, direction):
        length = kb * 1024
        return 2048 * length / float(model.transfer_seconds(topo, np.array([length]), direction)[0]) / gib

    assert rate(1, "to_dpu") == pytest.approx(3.5, rel=0.15)
    assert rate(1, "from_dpu") == pytest.approx(1.8, rel=0.15)
    assert rate(512, "to_dpu") == pytest.approx(22.6, rel=0.10)
    assert rate(512, "from_dpu") == pytest.approx(11.0, rel=0.10)


# ---- monotonicity ------------------------------------------------------------------------------


def _random_counters(rng, nr_dpus=8, nt=16, dtype="int32") -> KernelCounters:
    lk = rng.integers(0, 200, size=(nr_dpus, nt)).astype(float)
    reads = lk + rng.integers(0, 4, size=(nr_dpus, nt))
    return KernelCounters(
        nr_tasklets=nt,
        dtype=dtype,
        lookups=lk.sum(1),
        bags=rng.integers(0, 20, size=nr_dpus),
        elements=lk.sum(1) * 16,
        dma_read_ops=reads,
        dma_read_bytes=reads * rng.choice([8, 64, 256], size=(nr_dpus, nt)),
        dma_write_ops=rng.integers(0, 5, size=(nr_dpus, nt)),
        dma_write_bytes=rng.integers(0, 5, size=(nr_dpus, nt)) * 64,
        lookups_per_tasklet=lk,
    )


@pytest.mark.parametrize("seed", range(5))
def test_more_bytes_or_lookups_never_model_faster(model, seed):
    rng = np.random.default_rng(seed)
    topo = Topology(nr_dpus=8)
    base = _random_counters(rng)
    t0 = model.kernel_phase(topo, base).seconds
    for field_name in ("dma_read_bytes", "dma_write_bytes", "dma_read_ops", "lookups_per_tasklet"):
        bumped = _random_counters(np.random.default_rng(seed))
        arr = getattr(bumped, field_name).copy()
        d, t = rng.integers(0, 8), rng.integers(0, 16)
        arr[d, t] += rng.integers(1, 5000)
        setattr(bumped, field_name, arr)
        if field_name == "lookups_per_tasklet":
            bumped.lookups = arr.sum(1)
            bumped.elements = arr.sum(1) * 16
        assert model.kernel_phase(topo, bumped).seconds >= t0, field_name
    more_elems = _random_counters(np.random.default_rng(seed))
    more_elems.elements = more_elems.elements * 2
    assert model.kernel_phase(topo, more_elems).seconds >= t0
    # transfers: longer pushes never model faster
    small = model.transfer_seconds(topo, np.array([64.0, 1024.0, 4096.0]), "to_dpu")
    big = model.transfer_seconds(topo, np.array([72.0, 2048.0, 65536.0]), "to_dpu")
    assert np.all(big >= small)


def test_more_dpus_same_load_never_slower_kernel_never_faster_transfer(model):
    kernel_times, transfer_times = [], []
    for nr_dpus in (1, 64, 65, 640, 2560):
        topo = Topology(nr_dpus=nr_dpus)
        k = synthetic_kernel_counters(nr_dpus, 16, lookups_per_tasklet=50, elements_per_lookup=16,
                                      bags_per_tasklet=4, reads_per_tasklet=51, read_bytes_each=64)
        kernel_times.append(model.kernel_phase(topo, k).seconds)
        transfer_times.append(float(model.transfer_seconds(topo, np.array([4096.0]), "to_dpu")[0]))
    assert kernel_times == pytest.approx([kernel_times[0]] * len(kernel_times))
    assert all(b >= a for a, b in zip(transfer_times, transfer_times[1:]))


def test_slowest_dpu_sets_kernel_time(model):
    topo = Topology(nr_dpus=4)
    k = synthetic_kernel_counters(4, 16, lookups_per_tasklet=10, elements_per_lookup=16,
                                  reads_per_tasklet=10, read_bytes_each=64)
    reads = k.dma_read_ops.copy()
    reads[2] *= 10
    k.dma_read_ops = reads
    k.dma_read_bytes = reads * 64
    phase = model.kernel_phase(topo, k)
    assert phase.detail["slowest_dpu"] == 2
    assert phase.source == "modeled"
    assert phase.detail["imbalance_max_over_mean"] > 1.0


def test_padding_counts_in_transfers(model):
    # one push moves the same (padded) length to every DPU: a single big request makes it slow
    topo = Topology(nr_dpus=128)
    useful = np.full(128, 1024.0)
    balanced = TransferCounters(np.array([1024.0]), np.array([64.0]), useful, np.full(128, 64.0))
    useful_skew = useful.copy()
    useful_skew[0] = 1 << 20
    skewed = TransferCounters(np.array([float(1 << 20)]), np.array([64.0]), useful_skew, np.full(128, 64.0))
    a = model.transfer_phase(topo, balanced, "to_dpu")
    b = model.transfer_phase(topo, skewed, "to_dpu")
    assert b.seconds > 5 * a.seconds
    assert b.detail["padding_overhead"] > 50


# ---- whole batch, bound, dict converter -------------------------------------------------------


def _counter_dict(nr_dpus=4, nt=16):
    rng = np.random.default_rng(0)
    k = _random_counters(rng, nr_dpus=nr_dpus, nt=nt)
    return {
        "nr_tasklets": nt,
        "dtype": "int32",
        "lookups": k.lookups.tolist(),
        "bags": k.bags.tolist(),
        "elements": k.elements.tolist(),
        "dma_read_ops": k.dma_read_ops.tolist(),
        "dma_read_bytes": k.dma_read_bytes.tolist(),
        "dma_write_ops": k.dma_write_ops.tolist(),
        "dma_write_bytes": k.dma_write_bytes.tolist(),
        "pushed_bytes": [1000.0, 2000.0, 512.0, 8.0],
        "pulled_bytes": [256.0] * nr_dpus,
        "push_lengths": [32.0, 2000.0],
        "pull_lengths": [256.0],
    }


def test_model_batch_phases_labels_and_bound(model):
    topo = Topology(nr_dpus=4)
    mb = model.model_counters(topo, _counter_dict())
    assert [p.name for p in mb.phases] == ["cpu_to_dpu", "launch", "kernel", "dpu_to_cpu"]
    assert all(p.source == "modeled" and p.seconds > 0 for p in mb.phases)
    assert mb.get("cpu_to_dpu").detail["transfers"] == 2
    assert mb.bound.seconds > 0
    assert mb.seconds >= mb.bound.seconds
    assert mb.achieved_over_bound >= 1.0
    # the kernel alone is no faster than its MRAM bound
    assert mb.get("kernel").seconds >= mb.bound.mram_bound_s
    stats = BatchStats()
    mb.add_to(stats)
    assert stats.get("kernel", "modeled") is not None


def test_physical_bound_values(model):
    topo = Topology(nr_dpus=2)
    k = synthetic_kernel_counters(2, 16, reads_per_tasklet=10, read_bytes_each=2048)
    tr = TransferCounters(np.array([4096.0]), np.array([64.0]), np.full(2, 4096.0), np.full(2, 64.0))
    b = model.physical_bound(topo, k, tr)
    assert b.mram_bound_s == pytest.approx(16 * 10 * 2048 / (2 * CLOCK))
    assert b.transfer_bound_s == pytest.approx(2 * 4096 / 6.68e9 + 2 * 64 / 4.74e9)
    assert b.seconds == max(b.mram_bound_s, b.transfer_bound_s)


def test_multi_launch_counters_add_up(model):
    topo = Topology(nr_dpus=4)
    d = _counter_dict()
    one = model.model_counters(topo, d).get("kernel").seconds
    launch = {k: d[k] for k in ("lookups", "bags", "elements", "dma_read_ops", "dma_read_bytes",
                                "dma_write_ops", "dma_write_bytes")}
    two = model.model_counters(topo, {**d, "launches": [launch, launch]})
    assert two.get("kernel").seconds == pytest.approx(2 * one)
    assert two.get("launch").detail["launches"] == 2


def test_default_push_length_is_largest_request_padded(model):
    d = _counter_dict()
    del d["push_lengths"], d["pull_lengths"]
    _, tr = counters_from_dict(d)
    assert tr.to_dpu_lengths.tolist() == [2000.0]  # max(pushed_bytes), already a multiple of 8
    d["pushed_bytes"] = [1.0, 13.0, 0.0, 0.0]
    _, tr = counters_from_dict(d)
    assert tr.to_dpu_lengths.tolist() == [16.0]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.pop("dma_write_ops"), "dma_write_ops"),
        (lambda d: d.update(elements=[1.0, 2.0]), "elements"),
        (lambda d: d.update(dma_read_bytes=[[1.0] * 16] * 3), "dma_read_bytes"),
        (lambda d: d.update(bags=[1, 2, -3, 4]), "position (2,)"),
        (lambda d: d.update(dtype="bf16"), "dtype"),
        (lambda d: d.update(nr_tasklets=25), "nr_tasklets"),
        (lambda d: d.update(pulled_bytes=[1.0]), "pulled_bytes"),
        (lambda d: d.pop("pushed_bytes"), "pushed_bytes"),
    ],
)
def test_bad_counters_are_named(model, mutate, message):
    d = _counter_dict()
    mutate(d)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        counters_from_dict(d)


def test_topology_mismatch_is_an_error(model):
    with pytest.raises(ValueError, match="4 DPUs but the topology has 8"):
        model.model_counters(Topology(nr_dpus=8), _counter_dict())


def test_working_dpus_per_rank_sets_transfer_rank_count(model):
    full = Topology(nr_dpus=120)  # 64 + 56
    partial = Topology(nr_dpus=120, working_dpus_per_rank=(60, 60))
    L = np.array([float(8 << 20)])
    # the busiest rank moves 64 DPUs' data in the first, 60 in the second
    assert model.transfer_seconds(partial, L, "to_dpu")[0] < model.transfer_seconds(full, L, "to_dpu")[0]


# ---- constants ---------------------------------------------------------------------------------


def test_every_constant_has_source_and_status(model):
    for entry in model.describe():
        assert entry["source"], entry["name"]
        assert entry["status"] in ("published~", "derived", "fitted", "guessed"), entry["name"]
    guessed = {e["name"] for e in model.describe() if e["status"] == "guessed"}
    assert {"launch_fixed_s", "instr_per_lookup"} <= guessed


def test_from_file_overrides_and_rejects_unknown(tmp_path, model):
    p = tmp_path / "calib.json"
    p.write_text(json.dumps({"instr_per_lookup": 200, "launch_fixed_s": {"value": 1e-3, "source": "my box"}}))
    m2 = TimingModel.from_file(p)
    assert m2.constants["instr_per_lookup"] == 200
    assert m2.sources["launch_fixed_s"]["source"] == "my box"
    assert m2.constants["dma_read_alpha_cycles"] == model.constants["dma_read_alpha_cycles"]
    topo = Topology(nr_dpus=4)
    assert m2.model_counters(topo, _counter_dict()).seconds > model.model_counters(topo, _counter_dict()).seconds
    p.write_text(json.dumps({"dma_alpha": 3}))
    with pytest.raises(ValueError, match="unknown constant 'dma_alpha'"):
        TimingModel.from_file(p)
    p.write_text(json.dumps({"instr_per_bag": "many"}))
    with pytest.raises(ValueError, match="instr_per_bag"):
        TimingModel.from_file(p)
    p.write_text(json.dumps({"dma_beta_cycles_per_byte": 0}))
    with pytest.raises(ValueError, match="dma_beta_cycles_per_byte"):
        TimingModel.from_file(p)
    assert set(model.constants) == set(CONSTANT_NAMES)


def test_native_module_names_are_accepted(model):
    # host/python/module.cpp reports lookups_per_dpu, request_push_bytes (per launch), ...
    d = _counter_dict()
    native = {
        "nr_tasklets": d["nr_tasklets"], "dtype": d["dtype"],
        "lookups_per_dpu": d["lookups"], "bags_per_dpu": d["bags"],
        "dma_read_ops": d["dma_read_ops"], "dma_read_bytes": d["dma_read_bytes"],
        "dma_write_ops": d["dma_write_ops"], "dma_write_bytes": d["dma_write_bytes"],
        "request_bytes_per_dpu": [64.0, 128.0, 64.0, 8.0], "output_bytes_per_dpu": [256.0] * 4,
        "request_push_bytes": [128], "output_pull_bytes": [256],
    }
    kernels, tr = counters_from_dict(native)
    assert kernels[0].lookups.tolist() == list(map(float, d["lookups"]))
    assert tr.to_dpu_lengths.tolist() == [32.0, 128.0]  # launch args + the padded request
    assert tr.from_dpu_lengths.tolist() == [312.0, 256.0]  # status + the padded output
    # elements estimated from the row bytes read (DMA read bytes minus the staged request)
    rd = np.asarray(d["dma_read_bytes"]).sum(1)
    assert kernels[0].elements == pytest.approx((rd - np.array([64.0, 128.0, 64.0, 8.0])) / 4)


def test_dma_counters_estimated_when_absent(model):
    # SDK builds (simulator / hardware) count no DMAs: estimate them from the packer's counters.
    d = {
        "nr_tasklets": 16, "dtype": "int32",
        "lookups": [100.0, 0.0], "bags": [10.0, 0.0], "elements": [1600.0, 0.0],  # 16 cols -> 64-byte rows
        "request_bytes": [4096.0 + 64, 0.0], "output_bytes": [640.0, 0.0],
        "pushed_bytes": [4192.0, 32.0], "pulled_bytes": [952.0, 312.0],
        "measured_cycles": np.zeros((2, 16)),
    }
    kernels, _ = counters_from_dict(d)
    k = kernels[0]
    assert k.dma_read_ops.sum(axis=1).tolist() == pytest.approx([100 + 3, 0])  # rows + ceil(4160/2048)
    assert k.dma_read_bytes.sum(axis=1).tolist() == pytest.approx([100 * 64 + 4160, 0])
    assert k.dma_write_bytes.sum(axis=1).tolist() == pytest.approx([640, 0])
    assert model.model_counters(Topology(nr_dpus=2), d).get("kernel").detail["measured_cycles_max"] == 0.0


def test_tasklet_imbalance_hits_the_11_cycle_rule(model):
    # the same DPU work on one tasklet instead of 16: one tasklet issues at most every 11 cycles
    topo = Topology(nr_dpus=1)
    balanced = synthetic_kernel_counters(1, 16, lookups_per_tasklet=100, elements_per_lookup=16, bags_per_tasklet=5)
    skewed = synthetic_kernel_counters(1, 16, lookups_per_tasklet=100, elements_per_lookup=16, bags_per_tasklet=5)
    lk = np.zeros((1, 16))
    lk[0, 0] = 1600
    skewed.lookups_per_tasklet = lk
    skewed.bags_per_tasklet = None  # bags follow the lookup share
    fixed = model.constants["kernel_fixed_cycles"]
    b = model.kernel_cycles(balanced)["cycles"][0] - fixed
    s = model.kernel_cycles(skewed)["cycles"][0] - fixed
    assert s == pytest.approx(11 * b, rel=1e-6)
    assert model.kernel_phase(topo, skewed).detail["limiter"].startswith("tasklet chain")
