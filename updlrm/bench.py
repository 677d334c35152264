"""The CPU vs CPU-GPU vs PIM benchmark behind ``updlrm bench``.

Same model, same batches, every backend:

* ``cpu``          torch EmbeddingBag + MLPs on this machine's CPU (measured);
* ``cuda-hybrid``  UpDLRM's CPU-GPU baseline: lookups on the CPU, MLPs on the GPU (measured);
* ``cuda-gpu``     tables and MLPs on the GPU (measured);
* ``pim``          lookups on the emulated DPUs; host phases (pack, merge, MLP) are measured, the
                   DPU phases (CPU->DPU, launch, kernel, DPU->CPU) are **modeled** by
                   :mod:`updlrm.timing_model` from the emulator's exact counters. The emulator's
                   own wall time is recorded separately (``emulator-wall``) and never counted.

A backend that cannot run here is listed ``unavailable`` with the reason (e.g. no GPU), never
dropped. Sweeps cover batch sizes, DPU counts and partitioning strategies; each point runs
``warmup`` + ``repeats`` batches (the same batches for every backend) and reports p50/p90/p99 of
the per-batch latency and the median of every phase, each labelled with its source. For PIM runs
the physical bound (:meth:`TimingModel.physical_bound`) and modeled/bound are reported.

``device="simulator"`` / ``"hw"`` (SDK build): the DPU phases are the ones the device reported
(source ``simulator`` / ``hardware``), the latency is the host wall clock unchanged, the model's
phases for the same counters are kept next to them (``model_alongside_s``, never counted), and
``modeled_over_bound`` holds the device's measured DPU side over the bound.

Latency of one batch (seconds):
    cpu / cuda:  host wall clock around ``Engine.predict`` (validation, lookups, MLPs).
    pim:         host wall clock around ``Engine.predict`` - the emulator-wall phases
                 + the modeled DPU phases (so validation, pack, merge and MLP stay measured).

Outputs (:func:`write_outputs`): ``bench.json`` (config, machine, timing constants, every run),
``bench.csv`` (one row per run), and plots (latency vs batch size per backend; stacked per-phase
bars; PIM speedup over CPU and over the hybrid).

Example::

    from updlrm.bench import BenchConfig, run_bench, write_outputs, format_table
    cfg = BenchConfig(model="tiny", batch_sizes=[64, 256], repeats=3)
    result = run_bench(cfg)
    print(format_table(result)); write_outputs(result, "bench_out")
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from updlrm.errors import BackendUnavailableError

__all__ = ["BenchConfig", "BenchResult", "BACKEND_NAMES", "run_bench", "write_outputs", "format_table",
           "load_bench_config", "load_result", "load_plan_for", "machine_info"]

#: Backend labels of the bench (``cuda`` on the command line means both cuda variants).
BACKEND_NAMES = ("cpu", "cuda-hybrid", "cuda-gpu", "pim")
#: Phases each kind of backend reports, in pipeline order.
EXPECTED_PHASES = {
    "cpu": ("embed", "mlp"),
    "cuda-hybrid": ("embed", "mlp"),
    "cuda-gpu": ("embed", "mlp"),
    "pim": ("pack", "cpu_to_dpu", "launch", "kernel", "dpu_to_cpu", "merge", "mlp"),
}
MODELED_PHASES = ("cpu_to_dpu", "launch", "kernel", "dpu_to_cpu")


@dataclass
class BenchConfig:
    """What to benchmark.

    Attributes:
        model: a named config (``updlrm.configs.names()``) or a dict describing a DLRMConfig:
            ``{"name", "n_dense", "embedding_dim", "bottom_mlp": [...], "top_mlp": [...],
            "tables": [{"name", "rows"}, ...]}`` (dims default to ``embedding_dim``).
        row_scale, max_rows: shrink a named config's tables (``configs.get``). The default model
            is Criteo Kaggle's 26 tables with the rows of each capped at 2,000,000 (as dlrm's
            ``--max-ind-range``: the 5 largest tables shrink, 10.6M rows, 645 MiB fp32) on 2,560
            DPUs (a full 40-rank system), cache_aware int32 beside row_uniform int32.
        batch_sizes: samples per batch to sweep.
        pooling: lookups per bag; alpha: Zipf skew of the ids (``batch.random_batch``).
        backends: subset of :data:`BACKEND_NAMES` (``"cuda"`` = both cuda variants).
        nr_dpus, strategies: PIM sweep (every combination).
        dtype: PIM table type, ``"fp32"``, ``"int32"``, ``"int16"`` or ``"int8"``; nr_tasklets: per DPU.
        warmup, repeats: batches run and discarded / measured per point.
        seed: batch seed (batch i of a point uses seed + i; the same for every backend).
        timing_constants: optional JSON file overriding the timing model's constants.
        threads: torch CPU threads for the run (None: torch's default); recorded in the machine info.
        device: pim device: "emulator" (DPU phases modeled), or "simulator" / "hw" with the SDK
            build (DPU phases measured there, the model's figures shown next to them).
        profile_samples: popularity-aware strategies get an access profile from a separate random
            trace of this many samples (seed + 10,000: held out from the measured batches, same hot rows).
        plan: path of a saved plan (``updlrm partition --save-plan``, ``updlrm.partition.save_plan``)
            for the pim backend; it must match the model's table shapes. The run then has one pim
            point per batch size, with the plan's DPU count, tasklets and strategy: ``nr_dpus``,
            ``strategies`` and ``nr_tasklets`` are replaced by the plan's (the recorded config shows them).
    """

    model: Any = "kaggle"
    row_scale: float = 1.0
    max_rows: int | None = 2_000_000
    batch_sizes: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    pooling: int = 20
    alpha: float = 1.05
    backends: list[str] = field(default_factory=lambda: list(BACKEND_NAMES))
    nr_dpus: list[int] = field(default_factory=lambda: [2560])
    strategies: list[str] = field(default_factory=lambda: ["row_uniform", "cache_aware"])
    dtype: str = "int32"
    nr_tasklets: int = 16
    warmup: int = 1
    repeats: int = 5
    seed: int = 0
    timing_constants: str | None = None
    threads: int | None = None
    profile_samples: int = 8192
    device: str = "emulator"
    plan: str | None = None

    def __post_init__(self) -> None:
        if self.plan is not None:
            self.plan = os.fspath(self.plan)
        self.backends = _expand_backends(self.backends)
        self.batch_sizes = [int(b) for b in self.batch_sizes]
        self.nr_dpus = [int(n) for n in self.nr_dpus]
        self.strategies = [str(s) for s in self.strategies]
        for name, values in (("batch_sizes", self.batch_sizes), ("nr_dpus", self.nr_dpus)):
            if not values or min(values) < 1:
                raise ValueError(f"BenchConfig.{name} must be a non-empty list of positive integers, got {values}")
        if not self.strategies:
            raise ValueError("BenchConfig.strategies must not be empty")
        if self.dtype not in ("fp32", "int32", "int16", "int8"):
            raise ValueError(f"BenchConfig.dtype must be one of fp32, int32, int16, int8, got {self.dtype!r}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"BenchConfig needs repeats >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")
        if self.pooling < 0:
            raise ValueError(f"BenchConfig.pooling must be >= 0, got {self.pooling}")
        if not self.row_scale > 0:
            raise ValueError(f"BenchConfig.row_scale must be > 0, got {self.row_scale}")
        if self.device not in ("emulator", "simulator", "hw"):
            raise ValueError(f"BenchConfig.device must be 'emulator', 'simulator' or 'hw', got {self.device!r}")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"BenchConfig.threads must be >= 1 or None, got {self.threads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _expand_backends(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        expanded = ["cuda-hybrid", "cuda-gpu"] if name == "cuda" else [name]
        for n in expanded:
            if n not in BACKEND_NAMES:
                raise ValueError(f"unknown bench backend {name!r}; choose from cpu, cuda, cuda-hybrid, cuda-gpu, pim")
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("BenchConfig.backends must not be empty")
    return out


def load_bench_config(path: str | Path, **overrides) -> BenchConfig:
    """A :class:`BenchConfig` from a JSON file (keys = its attributes), then ``overrides``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read bench config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a bench config must be a JSON object")
    known = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown bench config key(s) {unknown}; known: {sorted(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return BenchConfig(**data)


def _model_config(cfg: BenchConfig):
    from updlrm import configs
    from updlrm.configs import DLRMConfig
    from updlrm.partition import TableSpec

    if isinstance(cfg.model, str):
        return configs.get(cfg.model, row_scale=cfg.row_scale, max_rows=cfg.max_rows)
    if not isinstance(cfg.model, dict):
        raise ValueError(f"BenchConfig.model must be a config name or a dict, got {type(cfg.model).__name__}")
    m = dict(cfg.model)
    try:
        dim = int(m["embedding_dim"])
        tables = tuple(
            TableSpec(str(t.get("name", f"T{i + 1}")), int(t["rows"]), int(t.get("dim", dim)))
            for i, t in enumerate(m["tables"])
        )
        config = DLRMConfig(
            name=str(m.get("name", "custom")), n_dense=int(m["n_dense"]), embedding_dim=dim,
            bottom_mlp=tuple(m["bottom_mlp"]), top_mlp=tuple(m["top_mlp"]), tables=tables,
            interaction_itself=bool(m.get("interaction_itself", False)), seed=int(m.get("seed", 0)),
        )
    except KeyError as exc:
        raise ValueError(f"custom model config is missing {exc.args[0]!r}") from None
    if cfg.row_scale != 1.0 or cfg.max_rows is not None:
        config = config.scaled(cfg.row_scale, cfg.max_rows)
    return config


def machine_info() -> dict:
    """Where the benchmark ran: CPU, cores, memory, load average, Python/torch/numpy versions, GPU,
    git commit."""
    import torch

    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # the PIM host packer/merger's thread count when forced (else its default, 2)
        "updlrm_host_threads": os.environ.get("UPDLRM_HOST_THREADS"),
    }
    try:
        # taken when the run ends: the 5- and 15-minute figures cover the run on a shared machine
        info["load_average_1_5_15_min"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        info["load_average_1_5_15_min"] = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


@dataclass
class BenchResult:
    """Everything one bench run produced (``to_dict`` is what ``bench.json`` holds)."""

    config: BenchConfig
    machine: dict
    model: dict
    timing_constants: list[dict]
    runs: list[dict]
    backends: dict[str, dict]  # backend -> {"available": bool, "reason": str | None}

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "machine": self.machine,
            "model": self.model,
            "backends": self.backends,
            "timing_constants": self.timing_constants,
            "notes": [
                "latency_s percentiles are over the measured repeats of one point",
                "pim: DPU phases (cpu_to_dpu, launch, kernel, dpu_to_cpu) are modeled by updlrm.timing_model "
                "from the emulator's exact counters; pack, merge and mlp are measured on this machine; "
                "emulator_wall_s is the emulator's host time, never part of the latency",
                "cpu / cuda: everything measured on this machine",
            ],
            "runs": self.runs,
        }


def _percentiles(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min()), "n": int(a.size)}


class _Runner:
    """Builds one engine per backend point and times batches on it."""

    def __init__(self, model, cfg: BenchConfig, timing_model, plan=None):
        self.model = model
        self.cfg = cfg
        self.timing = timing_model
        self.plan = plan  # a Plan checked against the model: every pim point uses it

    def profile_for(self, strategy: str):
        """An access profile when ``strategy`` needs one (built once, from a held-out trace)."""
        from updlrm.partition import get_strategy

        if not getattr(get_strategy(strategy), "needs_profile", False):
            return None
        if getattr(self, "_profile", None) is None:
            from updlrm.batch import random_batch
            from updlrm.partition.profile import profile_trace

            cfg = self.cfg
            trace = random_batch(self.model.config, cfg.profile_samples, pooling=cfg.pooling, alpha=cfg.alpha,
                                 seed=cfg.seed + 10_000)
            self._profile = profile_trace(trace, list(self.model.config.tables),
                                          source=f"random_batch seed {cfg.seed + 10_000}, {cfg.profile_samples} samples")
        return self._profile

    def engine(self, backend: str, nr_dpus: int | None = None, strategy: str | None = None):
        from updlrm.engine import Engine

        if backend == "cpu":
            return Engine(self.model, backend="cpu")
        if backend in ("cuda-hybrid", "cuda-gpu"):
            return Engine(self.model, backend="cuda", cuda_mode=backend.split("-")[1])
        if self.plan is not None:  # the plan brings its topology (DPUs, tasklets) and placement
            return Engine(self.model, backend="pim", strategy=self.plan, dtype=self.cfg.dtype, device=self.cfg.device)
        return Engine(self.model, backend="pim", nr_dpus=nr_dpus, strategy=strategy, dtype=self.cfg.dtype,
                      nr_tasklets=self.cfg.nr_tasklets, profile=self.profile_for(strategy), device=self.cfg.device)

    def time_point(self, engine, backend: str, batches: list) -> dict:
        """Run warmup + repeats batches; per-batch latency and phases (see the module docstring)."""
        cfg = self.cfg
        latencies: list[float] = []
        walls: list[float] = []
        phase_values: dict[str, list[float]] = {}
        phase_sources: dict[str, str] = {}
        emu_wall: dict[str, list[float]] = {}
        bounds: list[float] = []
        ratios: list[float] = []
        kernel_detail = None
        for i, batch in enumerate(batches):
            sync = getattr(engine.backend, "synchronize", None)
            t0 = time.perf_counter()
            engine.predict(batch)
            if sync is not None:
                sync()
            wall = time.perf_counter() - t0
            if i < cfg.warmup:
                continue
            stats = engine.last_stats
            latency = wall
            if backend == "pim" and cfg.device != "emulator":
                # simulator / hardware: the DPU phases were measured there; the model's estimate
                # is kept next to them for checking and refitting, not counted.
                modeled = self.timing.model_counters(engine.plan.topology, stats.counters, engine.plan)
                for p in modeled.phases:
                    emu_wall.setdefault("modeled:" + p.name, []).append(p.seconds)
                # measured DPU side (the phases the device reported) over the physical bound;
                # the host phases (pack, merge, MLP) are not in the bound, so not in the ratio
                device_s = sum(p.seconds for p in stats.phases
                               if p.source in ("hardware", "simulator") and p.name in MODELED_PHASES)
                bounds.append(modeled.bound.seconds)
                ratios.append(device_s / modeled.bound.seconds if modeled.bound.seconds > 0 else float("inf"))
                kernel_detail = modeled.get("kernel").detail
                phases = list(stats.phases)
            elif backend == "pim":
                modeled = self.timing.model_counters(engine.plan.topology, stats.counters, engine.plan)
                # The emulator doing the DPUs' job (whatever label the backend gave it) is host
                # time that real DPUs would not spend: take it out, put the modeled phases in.
                # Modeled phases the backend may have added itself are replaced by this model's.
                emulated = [p for p in stats.phases if p.source != "modeled"
                            and (p.source == "emulator-wall" or p.name in MODELED_PHASES)]
                for p in emulated:
                    emu_wall.setdefault(p.name, []).append(p.seconds)
                latency = wall - sum(p.seconds for p in emulated) + modeled.seconds
                phases = [p for p in stats.phases if p.source != "modeled" and p not in emulated] + modeled.phases
                bounds.append(modeled.bound.seconds)
                ratios.append(modeled.achieved_over_bound)
                kernel_detail = modeled.get("kernel").detail
            else:
                phases = list(stats.phases)
            for p in phases:
                phase_values.setdefault(p.name, []).append(p.seconds)
                phase_sources[p.name] = p.source
            latencies.append(latency)
            walls.append(wall)
        pim_source = ("measured host phases + modeled DPU phases" if cfg.device == "emulator"
                      else f"measured ({cfg.device})")
        out = {
            "latency_s": _percentiles(latencies),
            "latency_source": "measured" if backend != "pim" else pim_source,
            "host_wall_s": _percentiles(walls),
            "phases": {
                name: {"p50_s": float(np.median(v)), "min_s": float(np.min(v)), "source": phase_sources[name]}
                for name, v in phase_values.items()
            },
        }
        if backend == "pim" and cfg.device == "emulator" and len(batches) > cfg.warmup:
            # Two batches in flight (Engine.predict_many): the emulator's wall time per batch
            # (measured), and the steady state a real system would reach: per batch the larger of
            # the host stage (pack + merge + MLPs, measured above) and the DPU stage (modeled).
            t0 = time.perf_counter()
            for _ in engine.predict_many(batches[cfg.warmup:]):
                pass
            per_batch = (time.perf_counter() - t0) / (len(batches) - cfg.warmup)
            host = sum(out["phases"][n]["p50_s"] for n in ("pack", "merge", "mlp") if n in out["phases"])
            dpu = sum(out["phases"][n]["p50_s"] for n in MODELED_PHASES if n in out["phases"])
            out["pipelined"] = {"emulator_wall_per_batch_s": per_batch, "host_stage_s": host, "dpu_stage_modeled_s": dpu,
                                "period_s": max(host, dpu), "bound_by": "host" if host >= dpu else "dpu"}
        if backend == "pim":
            key = "emulator_wall_s" if cfg.device == "emulator" else "model_alongside_s"
            out[key] = {name.replace("modeled:", ""): float(np.median(v)) for name, v in emu_wall.items()}
            out["bound_s"] = float(np.median(bounds))
            out["modeled_over_bound"] = float(np.median(ratios))
            out["kernel_model"] = {k: v for k, v in (kernel_detail or {}).items() if k != "per_launch"}
            emu_cycles = engine.last_stats.counters.get("emu_modeled_cycles")
            if emu_cycles is not None and np.size(emu_cycles):
                # the emulator's own rough cycle estimate, shown next to this model's for checking
                out["kernel_model"]["emulator_cycle_estimate_max"] = float(np.max(emu_cycles))
        return out


def run_bench(cfg: BenchConfig, progress: bool | Callable[[str], None] = False) -> BenchResult:
    """Run every point of ``cfg``; ``progress=True`` shows a tqdm bar on stderr."""
    import torch

    from updlrm.timing_model import TimingModel

    timing = TimingModel.from_file(cfg.timing_constants) if cfg.timing_constants else TimingModel.default()
    config = _model_config(cfg)
    plan = None
    if cfg.plan is not None:
        plan = load_plan_for(cfg.plan, config)
        if "pim" not in cfg.backends:
            raise ValueError(f"a plan is for the pim backend, but the backends are {', '.join(cfg.backends)}")
        cfg = dataclasses.replace(cfg, nr_dpus=[plan.topology.nr_dpus], strategies=[plan.strategy],
                                  nr_tasklets=plan.topology.nr_tasklets)
    torch.manual_seed(cfg.seed)
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    try:
        result = _run_bench(cfg, progress, timing, config, plan)
        result.machine["torch_threads"] = torch.get_num_threads()
        return result
    finally:
        torch.set_num_threads(threads_before)


def load_plan_for(path: str | Path, config):
    """The plan saved at ``path``, checked against the tables of ``config`` (a DLRMConfig).

    Raises ValueError (``updlrm.partition.PlanError``) naming the file and what is wrong: missing,
    unreadable, or made for other table shapes (which table, the plan's rows x dim and the model's).
    """
    from updlrm.partition import PlanError, load_plan, validate_plan

    try:
        plan = load_plan(path)
    except PlanError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:  # a damaged plan file
        raise PlanError(f"{str(path)!r} is not a readable plan file ({type(exc).__name__}: {exc})") from None
    try:
        validate_plan(plan, config.tables)
    except PlanError as exc:
        raise PlanError(f"plan {str(path)!r} does not match the bench model {config.name!r}: {exc}") from None
    return plan


def _run_bench(cfg: BenchConfig, progress, timing, config, plan=None) -> BenchResult:
    from updlrm.batch import random_batch
    from updlrm.model import DLRM

    model = DLRM(config).eval()
    runner = _Runner(model, cfg, timing, plan)

    points: list[tuple[str, int | None, str | None]] = []
    for backend in cfg.backends:
        if backend == "pim":
            points += [("pim", n, s) for n in cfg.nr_dpus for s in cfg.strategies]
        else:
            points.append((backend, None, None))
    total = len(points) * len(cfg.batch_sizes)
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="updlrm bench", unit="point", file=sys.stderr)

    def tick(msg: str) -> None:
        if bar is not None:
            bar.set_postfix_str(msg)
            bar.update(1)
        elif callable(progress):
            progress(msg)

    batches_by_size = {}
    n_batches = cfg.warmup + cfg.repeats
    for b in cfg.batch_sizes:
        batches_by_size[b] = [random_batch(config, b, pooling=cfg.pooling, alpha=cfg.alpha, seed=cfg.seed + i)
                              for i in range(n_batches)]

    runs: list[dict] = []
    backends: dict[str, dict] = {}
    try:
        for backend, nr_dpus, strategy in points:
            base = {"backend": backend, "nr_dpus": nr_dpus, "strategy": strategy,
                    "dtype": cfg.dtype if backend == "pim" else "fp32"}
            if backend == "pim":
                base["device"] = cfg.device
                base["plan_file"] = cfg.plan
            try:
                engine = runner.engine(backend, nr_dpus, strategy)
            except BackendUnavailableError as exc:
                backends[backend] = {"available": False, "reason": str(exc)}
                for b in cfg.batch_sizes:
                    runs.append({**base, "batch_size": b, "status": "unavailable", "reason": str(exc)})
                    tick(f"{backend} unavailable")
                continue
            except Exception as exc:  # e.g. a plan that does not fit: report this point, go on
                reason = f"{type(exc).__name__}: {exc}"
                for b in cfg.batch_sizes:
                    runs.append({**base, "batch_size": b, "status": "failed", "reason": reason})
                    tick(f"{backend} failed")
                continue
            backends.setdefault(backend, {"available": True, "reason": None})
            try:
                for b in cfg.batch_sizes:
                    label = f"{backend} B={b}" + (f" dpus={nr_dpus} {strategy}" if backend == "pim" else "")
                    try:
                        rec = runner.time_point(engine, backend, batches_by_size[b])
                        runs.append({**base, "batch_size": b, "status": "ok", **rec})
                    except Exception as exc:  # one failing point is reported, the sweep goes on
                        runs.append({**base, "batch_size": b, "status": "failed",
                                     "reason": f"{type(exc).__name__}: {exc}"})
                    tick(label)
            finally:
                engine.close()
    finally:
        if bar is not None:
            bar.close()
    _add_speedups(runs)
    model_info = {
        "name": config.name, "nr_tables": config.nr_tables, "embedding_dim": config.embedding_dim,
        "total_rows": config.total_rows, "embedding_bytes": config.embedding_bytes,
        "pooling": cfg.pooling, "alpha": cfg.alpha,
    }
    return BenchResult(cfg, machine_info(), model_info, timing.describe(), runs, backends)


#: Phases that make up the embedding layer of a pim run (host pack/merge + the DPU phases).
PIM_EMBEDDING_PHASES = ("pack", "cpu_to_dpu", "launch", "kernel", "dpu_to_cpu", "merge")


def _add_speedups(runs: list[dict]) -> None:
    """Embedding-layer time of every ok run (cpu/cuda: the ``embed`` phase; pim: pack + modeled DPU
    phases + merge, sum of per-phase medians) and, for pim runs, speedups (p50 end-to-end latency,
    and embedding layer) over cpu and cuda-hybrid at the same batch size."""
    for r in runs:
        if r.get("status") != "ok":
            continue
        names = PIM_EMBEDDING_PHASES if r["backend"] == "pim" else ("embed",)
        r["embedding_s"] = float(sum(r["phases"][n]["p50_s"] for n in names if n in r["phases"]))
    ok = [r for r in runs if r.get("status") == "ok"]
    ref = {(r["backend"], r["batch_size"]): r for r in ok}
    for r in ok:
        if r["backend"] != "pim":
            continue
        for other in ("cpu", "cuda-hybrid"):
            base = ref.get((other, r["batch_size"]))
            key = other.replace("-", "_")
            r[f"speedup_over_{key}"] = base["latency_s"]["p50"] / r["latency_s"]["p50"] if base else None
            r[f"embedding_speedup_over_{key}"] = base["embedding_s"] / r["embedding_s"] if base else None


# ---- output ----------------------------------------------------------------------------------------


def _label(r: dict) -> str:
    if r["backend"] == "pim":
        dev = "" if r.get("device", "emulator") == "emulator" else f",{r['device']}"
        plan = ",plan" if r.get("plan_file") else ""
        return f"pim[{r['nr_dpus']} DPUs,{r['strategy']}{plan},{r['dtype']}{dev}]"
    return r["backend"]


def format_table(result: BenchResult) -> str:
    """The on-screen table: one line per run, latencies in ms, phases with their source."""
    lines = []
    m = result.machine
    lines.append(f"model {result.model['name']}: {result.model['nr_tables']} tables, dim {result.model['embedding_dim']}, "
                 f"{result.model['total_rows']:,} rows, pooling {result.model['pooling']}")
    lines.append(f"machine: {m.get('cpu_model', m['processor'])}, {m['cpu_count']} CPUs, torch {m['torch']}, "
                 f"GPU {m['gpu'] or 'none'}")
    for name, info in result.backends.items():
        if not info["available"]:
            lines.append(f"{name}: unavailable: {info['reason']}")
    src = {"measured": "meas", "modeled": "model", "emulator-wall": "emu", "hardware": "hw", "simulator": "sim"}
    header = (f"{'backend':40s} {'B':>5s} {'p50 ms':>9s} {'p90 ms':>9s} {'p99 ms':>9s}  {'xCPU':>6s} {'xHyb':>6s} "
              f"{'emb ms':>8s} {'embxCPU':>7s} {'bound ms':>9s} {'/bound':>7s}  phases p50 ms (source)")
    lines.append(header)
    lines.append("-" * len(header))
    shown_unavailable = set()
    for r in result.runs:
        if r["status"] == "unavailable":
            if _label(r) not in shown_unavailable:
                shown_unavailable.add(_label(r))
                lines.append(f"{_label(r):40s}   all  unavailable (see above)")
            continue
        if r["status"] != "ok":
            lines.append(f"{_label(r):40s} {r['batch_size']:5d}  {r['status']}: {r.get('reason', '')[:90]}")
            continue
        lat = r["latency_s"]
        phases = " ".join(f"{n}={v['p50_s'] * 1e3:.3f}({src.get(v['source'], v['source'])})" for n, v in r["phases"].items())

        def fmt(x, spec):
            return format(x, spec) if x is not None else "-"

        lines.append(
            f"{_label(r):40s} {r['batch_size']:5d} {lat['p50'] * 1e3:9.3f} {lat['p90'] * 1e3:9.3f} {lat['p99'] * 1e3:9.3f}  "
            f"{fmt(r.get('speedup_over_cpu'), '6.2f'):>6s} {fmt(r.get('speedup_over_cuda_hybrid'), '6.2f'):>6s} "
            f"{r['embedding_s'] * 1e3:8.3f} {fmt(r.get('embedding_speedup_over_cpu'), '7.2f'):>7s} "
            f"{fmt(r.get('bound_s', None) and r['bound_s'] * 1e3, '9.3f'):>9s} {fmt(r.get('modeled_over_bound'), '7.1f'):>7s}  {phases}"
        )
        if r.get("pipelined"):
            pl = r["pipelined"]
            lines.append(f"{'':40s}       pipelined, 2 in flight: {pl['period_s'] * 1e3:.3f} ms/batch modeled system "
                         f"(bound by {pl['bound_by']}: host {pl['host_stage_s'] * 1e3:.3f} measured, DPUs "
                         f"{pl['dpu_stage_modeled_s'] * 1e3:.3f} modeled); emulator "
                         f"{pl['emulator_wall_per_batch_s'] * 1e3:.1f} ms/batch (measured)")
        if r.get("kernel_model", {}).get("measured_cycles_max") is not None:
            km = r["kernel_model"]
            lines.append(f"{'':40s}       kernel cycles: modeled {km['cycles']:.0f}, perfcounter {km['measured_cycles_max']:.0f}")
    devices = {r.get("device", "emulator") for r in result.runs if r["backend"] == "pim"}
    if devices & {"emulator"} or not devices:
        lines.append("pim latency = measured host phases + modeled DPU phases (timing model); cpu/cuda measured here.")
    for dev in sorted(devices - {"emulator"}):
        lines.append(f"pim[...,{dev}] latency = host wall clock, DPU phases measured on the {dev} "
                     "(the model's phases are alongside in bench.json, model_alongside_s); /bound = measured DPU side / bound.")
    return "\n".join(lines)


CSV_PHASES = ("pack", "cpu_to_dpu", "launch", "kernel", "dpu_to_cpu", "merge", "embed", "mlp")


def write_outputs(result: BenchResult, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write bench.json, bench.csv and (``plots``) the PNG plots into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "csv": out / "bench.csv"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1))
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["backend", "nr_dpus", "strategy", "dtype", "batch_size", "status", "p50_ms", "p90_ms", "p99_ms",
                    "latency_source", *[f"{p}_ms" for p in CSV_PHASES], *[f"{p}_source" for p in CSV_PHASES],
                    "bound_ms", "modeled_over_bound", "speedup_over_cpu", "speedup_over_cuda_hybrid",
                    "embedding_ms", "embedding_speedup_over_cpu", "embedding_speedup_over_cuda_hybrid", "reason"])
        for r in result.runs:
            ok = r["status"] == "ok"
            ph = r.get("phases", {})
            lat = r.get("latency_s", {})
            w.writerow([
                r["backend"], r["nr_dpus"] or "", r["strategy"] or "", r["dtype"], r["batch_size"], r["status"],
                *[(lat[k] * 1e3 if ok else "") for k in ("p50", "p90", "p99")],
                r.get("latency_source", ""),
                *[(ph[p]["p50_s"] * 1e3 if p in ph else "") for p in CSV_PHASES],
                *[(ph[p]["source"] if p in ph else "") for p in CSV_PHASES],
                (r["bound_s"] * 1e3) if r.get("bound_s") is not None else "",
                r.get("modeled_over_bound", ""), r.get("speedup_over_cpu") or "",
                r.get("speedup_over_cuda_hybrid") or "",
                (r["embedding_s"] * 1e3) if "embedding_s" in r else "",
                r.get("embedding_speedup_over_cpu") or "", r.get("embedding_speedup_over_cuda_hybrid") or "",
                r.get("reason", ""),
            ])
    if plots:
        paths.update(_plots(result, out))
    return paths


def load_result(path: str | Path) -> BenchResult:
    """A :class:`BenchResult` read back from a ``bench.json`` (e.g. to redraw its plots with
    ``write_outputs``)."""
    data = json.loads(Path(path).read_text())
    try:
        return BenchResult(BenchConfig(**data["config"]), data["machine"], data["model"],
                           data["timing_constants"], data["runs"], data["backends"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a bench.json written by updlrm bench: {exc}") from None


def _plots(result: BenchResult, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.runs if r["status"] == "ok"]
    paths: dict[str, Path] = {}
    series: dict[str, list[tuple[int, float]]] = {}
    for r in ok:
        series.setdefault(_label(r), []).append((r["batch_size"], r["latency_s"]["p50"] * 1e3))
    unavailable = [f"{n}: unavailable" for n, i in result.backends.items() if not i["available"]]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.set_title(f"{result.model['name']}: latency vs batch size\n(pim = modeled DPU phases + measured host phases)",
                 fontsize=9)
    if unavailable:
        ax.text(0.01, 0.01, "; ".join(u.split(":")[0] + " unavailable" for u in unavailable),
                transform=ax.transAxes, fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["latency_plot"] = out / "latency_vs_batch.png"
    fig.savefig(paths["latency_plot"], dpi=110)
    plt.close(fig)

    # stacked per-phase bars, one bar per (run label, batch size): milliseconds on top, the share
    # of each phase below (so that a run dominated by one phase still shows the others)
    width = max(7, 0.5 * len(ok) + 2)
    fig, (ax, ax_share) = plt.subplots(2, 1, figsize=(width, 7.5), sharex=True,
                                       gridspec_kw={"height_ratios": [1, 1]})
    colors = dict(zip(CSV_PHASES, plt.cm.tab10.colors))
    names: list[str] = []
    for i, r in enumerate(ok):
        present = [p for p in CSV_PHASES if p in r["phases"]]
        total = sum(r["phases"][p]["p50_s"] for p in present) or 1.0
        bottom = share_bottom = 0.0
        for p in present:
            v = r["phases"][p]["p50_s"]
            hatch = "//" if r["phases"][p]["source"] == "modeled" else None
            ax.bar(i, v * 1e3, bottom=bottom, color=colors[p], hatch=hatch, edgecolor="white",
                   label=p if p not in names else None)
            ax_share.bar(i, 100 * v / total, bottom=share_bottom, color=colors[p], hatch=hatch, edgecolor="white")
            names.append(p)
            bottom += v * 1e3
            share_bottom += 100 * v / total
    ax_share.set_xticks(range(len(ok)))
    ax_share.set_xticklabels([f"{_label(r)}\nB={r['batch_size']}" for r in ok], rotation=90, fontsize=6)
    ax.set_ylabel("p50 per phase (ms)")
    ax_share.set_ylabel("share of the batch (%)")
    ax.legend(fontsize=7)
    ax.set_title("per-phase breakdown (hatched: modeled by the timing model; plain: measured)", fontsize=9)
    fig.tight_layout()
    paths["phases_plot"] = out / "phases.png"
    fig.savefig(paths["phases_plot"], dpi=110)
    plt.close(fig)

    # speedup of PIM over CPU and over the hybrid
    fig, ax = plt.subplots(figsize=(7, 4.5))
    any_line = False
    for i, r_label in enumerate(sorted({_label(r) for r in ok if r["backend"] == "pim"})):
        color = plt.cm.tab10.colors[i % 10]  # one color per PIM configuration, one line style per ratio
        rs = sorted((r for r in ok if _label(r) == r_label), key=lambda r: r["batch_size"])
        for key, style in (("speedup_over_cpu", "-o"), ("speedup_over_cuda_hybrid", "--s"),
                           ("embedding_speedup_over_cpu", ":^"), ("embedding_speedup_over_cuda_hybrid", ":v")):
            pts = [(r["batch_size"], r[key]) for r in rs if r.get(key)]
            if pts:
                what = "embedding layer" if key.startswith("embedding") else "end to end"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color,
                        label=f"{r_label} over {key.split('over_')[1].replace('_', '-')} ({what})")
                any_line = True
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel("speedup (p50 latency ratio)")
    ax.set_title("PIM (modeled) speedup over CPU and CPU-GPU hybrid (measured)", fontsize=9)
    if "cuda-hybrid" in result.backends and not result.backends["cuda-hybrid"]["available"]:
        ax.text(0.01, 0.01, "cuda-hybrid unavailable here: no speedup over hybrid", transform=ax.transAxes, fontsize=7)
    if any_line:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["speedup_plot"] = out / "speedup.png"
    fig.savefig(paths["speedup_plot"], dpi=110)
    plt.close(fig)
    return paths
