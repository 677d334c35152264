"""`updlrm demo`: one Kaggle-shaped DLRM answering the same Zipf-skewed batches on the CPU and on
emulated UPMEM DPUs, checking that both agree and printing what each phase cost.

    updlrm demo                      # the paper's best setting at system scale: 2,560 DPUs, cache_aware, int32
    updlrm demo --small              # the small setting: 64 DPUs, row_uniform, fp32, rows x 0.1
    updlrm demo --dtype fp32 --strategy column_wise --json
    updlrm demo --plan plan.json     # a plan saved by `updlrm partition --save-plan` (fixes DPUs + strategy)

It ends with one line saying which backend wins the embedding layer and by how much: the cpu
backend's measured time against the PIM time per batch a real system would take with two batches
in flight (the larger of host pack + merge, measured here, and the DPU phases, modeled).

Exit status: 0 when the two backends agree within the dtype's bound, 1 when they do not, 2 when
the arguments are bad, the plan does not fit the model, or the PIM backend cannot run here (with
the reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

#: What each figure's source means, in the words printed next to it.
SOURCE_LABELS = {
    "measured": "measured (host wall clock)",
    "emulator-wall": "emulator wall time (NOT a DPU latency)",
    "modeled": "modeled (UPMEM timing model)",
    "hardware": "measured on UPMEM hardware",
    "simulator": "UPMEM simulator",
}
#: Pipeline order of the rows of the phase table.
PHASE_ORDER = ("embed", "pack", "cpu_to_dpu", "launch", "kernel", "dpu_to_cpu", "merge", "mlp")
PHASE_TITLES = {
    "embed": "embedding lookups",
    "pack": "pack requests",
    "cpu_to_dpu": "CPU->DPU",
    "launch": "launch",
    "kernel": "kernel",
    "dpu_to_cpu": "DPU->CPU",
    "merge": "merge partial sums",
    "mlp": "MLPs + interaction",
}
#: Strategies that need no access profile (the others get one from a held-out batch).
BASELINE_STRATEGIES = ("row_uniform", "table_wise", "column_wise", "tile_uniform")
#: Defaults: the paper's best configuration (cache_aware placement, int32 fixed point) on a full
#: 2,560-DPU system (40 ranks of 64), with Kaggle's tables at a quarter of their 33.8M rows (8.4M
#: rows, 515 MiB fp32): loading takes a few seconds on 2 cores and the demo stays under ~3 GiB of
#: memory. --row-scale 1 (full Kaggle, 2 GiB) loads in about 15 s and peaks near 8 GiB.
DEFAULTS = {"dpus": 2560, "strategy": "cache_aware", "dtype": "int32", "row_scale": 0.25}
#: --small: the earlier default, 64 DPUs with row_uniform fp32 and rows x 0.1 (206 MiB fp32, ~12 s).
SMALL = {"dpus": 64, "strategy": "row_uniform", "dtype": "fp32", "row_scale": 0.1}


def add_parser(subparsers) -> None:
    from updlrm.partition import strategy_names

    p = subparsers.add_parser(
        "demo",
        help="run a Kaggle-shaped DLRM on the CPU and on emulated DPUs and compare",
        description=(
            "Build a Criteo-Kaggle-shaped DLRM (tables scaled by --row-scale), run the same "
            "Zipf-skewed batches on the cpu backend and on the pim backend (emulated UPMEM DPUs), "
            "check that both agree within the dtype's error bound, and print per-phase times "
            "(median over batches) and the emulator's counters."
        ),
    )
    p.add_argument("--batch-size", type=int, default=2048, help="samples per batch (default 2048)")
    p.add_argument("--batches", type=int, default=3, help="measured batches (default 3; one small warm-up batch runs first)")
    p.add_argument(
        "--dpus", type=int, default=None,
        help=f"emulated DPUs (default {DEFAULTS['dpus']}, --small {SMALL['dpus']}; with --plan, the plan's count)"
    )
    p.add_argument(
        "--strategy",
        default=None,
        help=f"partitioning strategy, one of {', '.join(strategy_names())} "
        f"(default {DEFAULTS['strategy']}, --small {SMALL['strategy']}; with --plan, the plan's)",
    )
    p.add_argument(
        "--plan",
        metavar="FILE",
        default=None,
        help="place the tables with a saved plan (`updlrm partition --save-plan FILE`, JSON) instead of "
        "--dpus/--strategy; it must match the model's table shapes, i.e. the same --row-scale (default: none)",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "int32", "int16", "int8"),
        default=None,
        help=f"element type of the tables on the DPUs: fp32, or int32 / int16 / int8 integers summed in int32 "
        f"(per-table scales; default {DEFAULTS['dtype']}, --small {SMALL['dtype']}). A --plan must have been made "
        f"with the same dtype",
    )
    p.add_argument(
        "--row-scale",
        type=float,
        default=None,
        help=f"share of Criteo Kaggle's 33.8M table rows to build (default {DEFAULTS['row_scale']:g}: 8.4M rows, "
        f"515 MiB fp32; --small {SMALL['row_scale']:g}; 1 = full Kaggle, 2 GiB)",
    )
    p.add_argument("--pooling", type=int, default=20, help="lookups per bag, i.e. per table and sample (default 20)")
    p.add_argument("--alpha", type=float, default=1.05, help="Zipf exponent of the ids, 0 = uniform (default 1.05)")
    p.add_argument("--seed", type=int, default=0, help="model and batch seed (default 0)")
    p.add_argument(
        "--small",
        action="store_true",
        help=f"the small setting: {SMALL['dpus']} DPUs, {SMALL['strategy']}, {SMALL['dtype']}, row scale "
        f"{SMALL['row_scale']:g} (options given explicitly still apply)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables (default: tables)")
    p.set_defaults(func=run)


def _progress(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _resolve_defaults(args) -> None:
    """Fill the options left unset from DEFAULTS (or SMALL with --small); --dpus/--strategy stay
    unset with --plan, which brings its own."""
    base = SMALL if args.small else DEFAULTS
    if args.dtype is None:
        args.dtype = base["dtype"]
    if args.row_scale is None:
        args.row_scale = base["row_scale"]


def _check_args(args) -> str | None:
    if args.plan is not None and (args.dpus is not None or args.strategy is not None):
        return "--plan fixes the DPU count and the strategy: drop --dpus / --strategy"
    for name in ("batch_size", "batches", "dpus"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    if args.pooling < 0:
        return f"--pooling must be >= 0, got {args.pooling}"
    if not args.row_scale > 0:
        return f"--row-scale must be > 0, got {args.row_scale}"
    if args.alpha < 0:
        return f"--alpha must be >= 0, got {args.alpha}"
    return None


def _load_plan_for(path: str, cfg, row_scale: float) -> tuple[object, str | None]:
    """The plan saved at ``path`` checked against ``cfg``'s tables: ``(plan, None)``, or
    ``(None, message)`` naming why it cannot be used (unreadable, or made for other table shapes)."""
    from updlrm.partition import PlanError, load_plan, validate_plan

    try:
        plan = load_plan(path)
    except PlanError as exc:
        return None, f"cannot use --plan: {exc}"
    except (OSError, KeyError, TypeError, ValueError) as exc:  # a damaged file
        return None, f"cannot use --plan: {path!r} is not a readable plan file ({type(exc).__name__}: {exc})"
    try:
        validate_plan(plan, cfg.tables)
    except PlanError as exc:
        return None, (
            f"--plan {path} does not match the demo model ({cfg.name}, row scale {row_scale:g}): {exc}; "
            "save a plan for the same --row-scale"
        )
    return plan, None


def _summarise_counters(counters: dict) -> dict:
    """The emulator's counters of one batch as plain numbers (whatever of them the backend gave)."""
    out: dict = {}

    def arr(key):
        v = counters.get(key)
        return None if v is None else np.asarray(v, dtype=np.float64)

    lookups = arr("lookups")
    if lookups is not None and lookups.size:
        out["lookups_per_dpu"] = {"min": float(lookups.min()), "mean": float(lookups.mean()), "max": float(lookups.max())}
        out["lookup_imbalance_max_over_mean"] = float(lookups.max() / lookups.mean()) if lookups.mean() > 0 else None
    for key in ("dma_read_ops", "dma_read_bytes", "dma_write_ops", "dma_write_bytes", "pushed_bytes", "pulled_bytes"):
        a = arr(key)
        if a is not None:
            out[key] = int(a.sum())
    nr_dpus = lookups.size if lookups is not None else None
    for key, padded in (("push_lengths", "pushed_bytes_padded"), ("pull_lengths", "pulled_bytes_padded")):
        a = arr(key)
        if a is not None and nr_dpus:
            out[padded] = int(a.sum() * nr_dpus)
    for key in ("launches_count", "nr_launches"):
        if key in counters and np.isscalar(counters[key]):
            out["launches"] = int(counters[key])
    return out


def _median_summary(per_batch: list[dict]) -> dict:
    """Median over batches of each numeric leaf of the counter summaries."""
    if not per_batch:
        return {}
    out: dict = {}
    for key, value in per_batch[0].items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(b[key][k] for b in per_batch) for k in value}
        elif value is None:
            out[key] = None
        else:
            out[key] = statistics.median(b[key] for b in per_batch)
    return out


def _modeled_phases(engine, stats):
    """Timing-model phases for a batch when the backend did not add them (None if not possible)."""
    if any(p.source == "modeled" for p in stats.phases):
        return None, None
    try:
        from updlrm.timing_model import TimingModel, counters_from_dict

        kernels, transfers = counters_from_dict(stats.counters)
        return TimingModel.default().model_batch(engine.plan.topology, kernels, transfers).phases, None
    except Exception as exc:  # the model is optional for the demo: say why it is missing
        return None, f"{type(exc).__name__}: {exc}"


def run(args) -> int:
    _resolve_defaults(args)
    problem = _check_args(args)
    if problem:
        print(f"updlrm demo: {problem}", file=sys.stderr)
        return 2
    from updlrm import configs
    from updlrm.batch import random_batch
    from updlrm.engine import Engine
    from updlrm.errors import BackendUnavailableError, UpdlrmError
    from updlrm.model import DLRM

    torch.manual_seed(args.seed)
    cfg = configs.get("kaggle", row_scale=args.row_scale, seed=args.seed)
    plan = None
    if args.plan is not None:
        plan, problem = _load_plan_for(args.plan, cfg, args.row_scale)
        if problem:
            print(f"updlrm demo: {problem}", file=sys.stderr)
            return 2
    base = SMALL if args.small else DEFAULTS
    nr_dpus = plan.topology.nr_dpus if plan is not None else (args.dpus or base["dpus"])
    strategy_name = plan.strategy if plan is not None else (args.strategy or base["strategy"])
    _progress(
        f"model {cfg.name}: {cfg.nr_tables} tables, {cfg.total_rows:,} rows x dim {cfg.embedding_dim} "
        f"({cfg.embedding_bytes / 2**20:.1f} MiB fp32), row scale {args.row_scale:g}"
    )
    t0 = time.perf_counter()
    _progress("initialising the model's tables")
    model = DLRM(cfg).eval()
    _progress(f"initialised the model in {time.perf_counter() - t0:.1f} s; generating {args.batches} batches")
    batches = [
        random_batch(cfg, args.batch_size, pooling=args.pooling, alpha=args.alpha, seed=args.seed * 1000 + i)
        for i in range(args.batches)
    ]
    profile = None
    if plan is None and strategy_name not in BASELINE_STRATEGIES:
        # popularity-aware strategies get an access profile measured on a held-out batch
        from updlrm.partition.profile import profile_trace

        held_out = random_batch(cfg, 4 * args.batch_size, pooling=args.pooling, alpha=args.alpha, seed=args.seed + 777_777)
        profile = profile_trace(held_out, cfg.tables, source=f"held-out random batch ({held_out.batch_size} samples)")
        _progress(f"measured an access profile on a held-out batch of {held_out.batch_size} samples")
    cpu = Engine(model, backend="cpu")
    origin = f"plan {args.plan}: " if plan is not None else ""
    _progress(f"placing the tables on {nr_dpus} emulated DPUs ({origin}{strategy_name}, {args.dtype}) and loading MRAM")
    t0 = time.perf_counter()
    try:
        if plan is not None:  # the plan brings its own topology (DPU count, tasklets)
            pim = Engine(model, backend="pim", strategy=plan, dtype=args.dtype)
        else:
            pim = Engine(model, backend="pim", nr_dpus=nr_dpus, strategy=strategy_name, dtype=args.dtype, profile=profile)
    except BackendUnavailableError as exc:
        print(f"updlrm demo: the pim backend cannot run here: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # PlanError, PlanDoesNotFitError, unknown strategy
        print(f"updlrm demo: cannot place the tables: {exc}", file=sys.stderr)
        return 2
    except UpdlrmError as exc:  # NativeError while loading the DPUs
        print(f"updlrm demo: loading the tables into the DPUs failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0
    _progress(f"tables loaded in {load_s:.1f} s")

    # one small warm-up batch per backend (first-call costs: allocator, thread pools, caches)
    warm = random_batch(cfg, min(64, args.batch_size), pooling=args.pooling, alpha=args.alpha, seed=args.seed + 999_999)
    cpu.predict(warm)
    pim.predict(warm)

    times: dict[tuple[str, str, str], list[float]] = {}
    counter_summaries, modeled_note = [], None
    worst = {"pooled_abs": 0.0, "pooled_bound": 0.0, "pooled_ratio": 0.0, "prob_abs": 0.0, "prob_bound": 0.0, "prob_ratio": 0.0}
    # A randomly initialised Kaggle-shaped DLRM with pooling 20 often saturates its sigmoid: count
    # probabilities that are exactly 0 or 1 in fp32, where agreeing probabilities prove little.
    saturated, predicted = 0, 0
    try:
        for i, batch in enumerate(batches):
            _progress(f"batch {i + 1}/{len(batches)}: {batch.nr_lookups:,} lookups")
            p_cpu, pooled_cpu = cpu.predict_with_pooled(batch)
            cpu_stats = cpu.last_stats
            p_pim, pooled_pim = pim.predict_with_pooled(batch)
            pim_stats = pim.last_stats
            for backend, stats in (("cpu", cpu_stats), ("pim", pim_stats)):
                for ph in stats.phases:
                    times.setdefault((backend, ph.name, ph.source), []).append(ph.seconds)
            modeled, note = _modeled_phases(pim, pim_stats)
            modeled_note = modeled_note or note
            for ph in modeled or ():
                times.setdefault(("pim", ph.name, ph.source), []).append(ph.seconds)
            counter_summaries.append(_summarise_counters(pim_stats.counters))

            # agreement: both paths deviate from the exact sums by at most their bound
            bound = (pim.pooled_error_bound(batch) + cpu.pooled_error_bound(batch)).expand_as(pooled_cpu)
            diff = (pooled_pim.double() - pooled_cpu.double()).abs()
            with torch.no_grad():
                x = model.bottom(batch.dense)
                p_bound = model.probability_error_bound(x, pooled_cpu, bound) + 1e-6
            p_diff = (p_pim.double() - p_cpu.double()).abs()
            k = int(torch.argmax(diff / bound))
            worst["pooled_abs"] = max(worst["pooled_abs"], float(diff.max()))
            worst["pooled_bound"] = max(worst["pooled_bound"], float(bound.min()))
            worst["pooled_ratio"] = max(worst["pooled_ratio"], float(diff.reshape(-1)[k] / bound.reshape(-1)[k]))
            j = int(torch.argmax(p_diff / p_bound))
            worst["prob_abs"] = max(worst["prob_abs"], float(p_diff.max()))
            worst["prob_bound"] = max(worst["prob_bound"], float(p_bound.min()))
            worst["prob_ratio"] = max(worst["prob_ratio"], float(p_diff[j] / p_bound[j]))
            saturated += int(((p_cpu <= 0.0) | (p_cpu >= 1.0)).sum())
            predicted += int(p_cpu.numel())
    except UpdlrmError as exc:  # a DPU fault or a native error while serving a batch
        print(f"updlrm demo: the pim backend failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        pim.close()
        cpu.close()
    agree = worst["pooled_ratio"] <= 1.0 and worst["prob_ratio"] <= 1.0

    phases = []
    for (backend, name, source), secs in times.items():
        phases.append(
            {
                "backend": backend,
                "phase": name,
                "source": source,
                "median_s": statistics.median(secs),
                "all_s": secs,
            }
        )
    phases.sort(key=lambda r: (r["backend"], PHASE_ORDER.index(r["phase"]) if r["phase"] in PHASE_ORDER else 99, r["source"]))
    lookups = batches[0].nr_lookups

    def backend_embed_s(backend: str, sources: tuple[str, ...]) -> float:
        return sum(r["median_s"] for r in phases if r["backend"] == backend and r["phase"] != "mlp" and r["source"] in sources)

    cpu_embed = backend_embed_s("cpu", ("measured",))
    pim_embed = backend_embed_s("pim", ("measured", "emulator-wall"))
    # real-hardware estimate: host-side pack/merge as measured + the modeled DPU-side phases
    modeled_dpu = backend_embed_s("pim", ("modeled",))
    pim_host = backend_embed_s("pim", ("measured",))
    pim_modeled = pim_host + modeled_dpu if modeled_dpu > 0 else 0.0
    report = {
        "model": {
            "config": cfg.name,
            "tables": cfg.nr_tables,
            "rows": cfg.total_rows,
            "dim": cfg.embedding_dim,
            "embedding_mib_fp32": cfg.embedding_bytes / 2**20,
            "row_scale": args.row_scale,
        },
        "workload": {
            "batch_size": args.batch_size,
            "batches": args.batches,
            "pooling": args.pooling,
            "zipf_alpha": args.alpha,
            "lookups_per_batch": lookups,
            "seed": args.seed,
        },
        "pim": {
            "dpus": nr_dpus,
            "strategy": strategy_name,
            "plan_file": args.plan,
            "dtype": args.dtype,
            "device": "emulator",
            "load_s": load_s,
        },
        "phases": phases,
        "lookups_per_s": {
            "cpu_embed_measured": lookups / cpu_embed if cpu_embed > 0 else None,
            "pim_emulated_end_to_end": lookups / pim_embed if pim_embed > 0 else None,
            "pim_modeled_hardware": lookups / pim_modeled if pim_modeled > 0 else None,
        },
        "verdict": _verdict(cpu_embed, pim_host, modeled_dpu, nr_dpus, args.batch_size),
        "counters_median": _median_summary(counter_summaries),
        "modeled_note": modeled_note,
        "agreement": {**worst, "ok": agree, "saturated_share": saturated / max(predicted, 1)},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    if not agree:
        print("updlrm demo: cpu and pim DISAGREE beyond the dtype's bound", file=sys.stderr)
        return 1
    return 0


def _verdict(cpu_s: float, pim_host_s: float, pim_dpu_modeled_s: float, nr_dpus: int, batch_size: int) -> dict:
    """Which backend wins the embedding layer (median per batch): the cpu backend as measured vs
    PIM as a real system would run it with two batches in flight (``Engine.predict_many``): the
    host packs batch n+1 and merges n-1 while the DPUs run n, so a batch costs the larger of the
    host stage (pack + merge, measured) and the DPU stage (modeled). One batch alone costs both."""
    period = max(pim_host_s, pim_dpu_modeled_s)
    out = {"cpu_s": cpu_s, "pim_host_measured_s": pim_host_s, "pim_dpu_modeled_s": pim_dpu_modeled_s,
           "pim_s": period, "pim_one_batch_s": pim_host_s + pim_dpu_modeled_s, "winner": None, "ratio": None,
           "bound_by": "host" if pim_host_s >= pim_dpu_modeled_s else "dpu"}
    if pim_dpu_modeled_s <= 0 or cpu_s <= 0:
        out["line"] = "embedding layer: no verdict (the timing model gave no DPU phases, see 'modeled phases' above)"
        return out
    winner, ratio = ("pim", cpu_s / period) if period < cpu_s else ("cpu", period / cpu_s)
    out.update(winner=winner, ratio=ratio)
    bound = "host pack+merge" if out["bound_by"] == "host" else "the DPUs"
    out["line"] = (
        f"embedding layer: {winner} wins, {ratio:.1f}x faster: cpu {cpu_s * 1e3:.2f} ms (measured) vs pim "
        f"{period * 1e3:.2f} ms per batch of {batch_size:,} pipelined on {nr_dpus:,} DPUs, bound by {bound} "
        f"({pim_host_s * 1e3:.2f} ms host pack+merge measured, {pim_dpu_modeled_s * 1e3:.2f} ms DPU side MODELED)"
    )
    return out


def _fmt_count(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _print_report(r: dict) -> None:
    m, w, p = r["model"], r["workload"], r["pim"]
    print(
        f"updlrm demo: {m['config']} DLRM, {m['tables']} tables, {m['rows']:,} rows x dim {m['dim']} "
        f"({m['embedding_mib_fp32']:.1f} MiB, row scale {m['row_scale']:g})"
    )
    print(
        f"workload: {w['batches']} batches of B={w['batch_size']}, pooling {w['pooling']}, Zipf alpha "
        f"{w['zipf_alpha']:g} ({w['lookups_per_batch']:,} lookups per batch)"
    )
    origin = f" (from plan {p['plan_file']})" if p.get("plan_file") else ""
    print(
        f"pim: {p['dpus']} emulated DPUs, strategy {p['strategy']}{origin}, dtype {p['dtype']} "
        f"(tables loaded in {p['load_s']:.1f} s)"
    )
    print()
    print(f"{'backend':<8} {'phase':<20} {'median ms':>10}  source")
    print("-" * 78)
    for row in r["phases"]:
        title = PHASE_TITLES.get(row["phase"], row["phase"])
        print(f"{row['backend']:<8} {title:<20} {row['median_s'] * 1e3:>10.3f}  {SOURCE_LABELS.get(row['source'], row['source'])}")
    print()
    lps = r["lookups_per_s"]
    if lps["cpu_embed_measured"]:
        print(f"{'cpu embedding lookups/s (torch EmbeddingBag, measured):':<68}{lps['cpu_embed_measured'] / 1e6:8.2f} M")
    if lps["pim_emulated_end_to_end"]:
        print(f"{'pim lookups/s on this machine (pack..merge incl. emulator):':<68}{lps['pim_emulated_end_to_end'] / 1e6:8.2f} M")
    if lps.get("pim_modeled_hardware"):
        label = f"pim lookups/s on {r['pim']['dpus']} real DPUs (pack/merge measured, rest modeled):"
        print(f"{label:<68}{lps['pim_modeled_hardware'] / 1e6:8.2f} M")
    if r["modeled_note"]:
        print(f"modeled phases: not available ({r['modeled_note']})")
    c = r["counters_median"]
    if c:
        print()
        print("emulator counters (median over batches)")
        if "lookups_per_dpu" in c:
            l = c["lookups_per_dpu"]
            print(f"  lookups per DPU          min {l['min']:,.0f}  mean {l['mean']:,.1f}  max {l['max']:,.0f}")
        for key, title in (
            ("dma_read_ops", "MRAM DMA reads (ops)"),
            ("dma_read_bytes", "MRAM DMA read bytes"),
            ("dma_write_ops", "MRAM DMA writes (ops)"),
            ("dma_write_bytes", "MRAM DMA write bytes"),
            ("pushed_bytes", "bytes pushed (useful)"),
            ("pushed_bytes_padded", "bytes pushed (incl. padding)"),
            ("pulled_bytes", "bytes pulled (useful)"),
            ("pulled_bytes_padded", "bytes pulled (incl. padding)"),
        ):
            if key in c:
                print(f"  {title:<28} {_fmt_count(c[key])}")
    a = r["agreement"]
    print()
    verdict = "OK" if a["ok"] else "MISMATCH"
    print(
        f"agreement {verdict}: pooled max |pim-cpu| = {a['pooled_abs']:.3g} "
        f"(worst diff/bound {a['pooled_ratio']:.3g}); probabilities max |pim-cpu| = {a['prob_abs']:.3g} "
        f"(worst diff/bound {a['prob_ratio']:.3g})"
    )
    if a.get("saturated_share", 0.0) > 0.5:
        print(
            f"note: {a['saturated_share']:.0%} of the probabilities are exactly 0 or 1 in fp32 (random weights, "
            "large pooled sums), so their agreement proves little; the pooled-embedding check above is the "
            "one that compares the embedding layers"
        )
    print()
    print(r["verdict"]["line"])
