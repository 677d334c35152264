"""`updlrm partition`: the strategy lab on the command line.

Compare placement strategies on one model + Zipf workload + DPU count (profile on trace A,
evaluate on held-out trace B) and print a table; ``--sweep`` runs a grid of DPU counts, Zipf
alphas and batch sizes into a CSV and plots; ``--save-plan FILE`` writes one strategy's plan for
``updlrm demo`` / ``bench`` / the engine (``load_plan``).
"""

from __future__ import annotations

import argparse
import json
import sys


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _option(s: str) -> tuple[str, str, object]:
    """``strategy.name=value`` -> (strategy, name, value); value parsed as int, float, bool or str."""
    try:
        key, raw = s.split("=", 1)
        strategy, name = key.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STRATEGY.OPTION=VALUE (e.g. cache_aware.tune=true), got {s!r}")
    low = raw.lower()
    if low in ("true", "false"):
        return strategy, name, low == "true"
    for conv in (int, float):
        try:
            return strategy, name, conv(raw)
        except ValueError:
            pass
    return strategy, name, raw


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "partition",
        help="compare partitioning strategies (imbalance, transfers, estimated latency), sweep, save plans",
        description=(
            "Place a Criteo-Kaggle-shaped model on N DPUs with every strategy, profile on a Zipf trace A, "
            "evaluate on a held-out trace B of the same distribution, and print imbalance, transfer bytes "
            "(padded to the largest DPU), estimated latency and replica hit rate per strategy."
        ),
    )
    p.add_argument("--model", default="kaggle", help="named config from updlrm.configs (default kaggle)")
    p.add_argument("--row-scale", type=float, default=1.0, help="scale every table's rows (default 1.0: full size)")
    p.add_argument("--dpus", type=int, default=2048, help="DPUs (default 2048)")
    p.add_argument("--alpha", type=float, default=1.05, help="Zipf exponent of the trace (default 1.05)")
    p.add_argument("--pooling", type=int, default=20, help="lookups per bag (default 20)")
    p.add_argument("--batch-size", type=int, default=2048, help="samples per batch (default 2048)")
    p.add_argument("--profile-batches", type=int, default=8, help="batches in profiling trace A (default 8)")
    p.add_argument("--eval-batches", type=int, default=2, help="batches in held-out trace B (default 2)")
    p.add_argument("--seed", type=int, default=0, help="trace seed (default 0)")
    p.add_argument("--strategies", default=None, help="comma-separated strategies (default: all registered)")
    p.add_argument("--latency", choices=["timing-model", "simple"], default="timing-model",
                   help="latency model: updlrm.timing_model (default) or lookups x row bytes")
    p.add_argument("--set", dest="options", type=_option, action="append", default=[], metavar="STRATEGY.OPTION=VALUE",
                   help="a strategy option, repeatable (e.g. --set cache_aware.tune=true --set cache_aware.hot_threshold=0.02)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--save-plan", metavar="FILE", help="save the plan of --plan-strategy to FILE (JSON, + .rows.npz)")
    p.add_argument("--dtype", choices=("fp32", "int32", "int16", "int8"), default="fp32",
                   help="element type the tables are stored in on the DPUs; sets row bytes, hence MRAM use and "
                        "what fits (default fp32; int8 stores 4x the rows per DPU)")
    p.add_argument("--plan-strategy", default="cache_aware", help="strategy whose plan --save-plan writes (default cache_aware)")
    hosts = p.add_argument_group("two-level plans: hosts, then DPUs within each host (partition.hosts)")
    hosts.add_argument("--hosts", type=int, default=None, metavar="H",
                       help="plan for H hosts (shard servers) instead of one: per-host load, bytes returned, modeled "
                            "latency with a network hop; --save-plan writes the host plan")
    hosts.add_argument("--dpus-per-host", type=int, default=None, metavar="N", help="DPUs per host (default --dpus)")
    hosts.add_argument("--replicas", type=int, default=1, metavar="R", help="copies of every shard on distinct hosts (default 1)")
    hosts.add_argument("--hot-rows", type=int, default=0, help="hot rows copied onto every range of a split table (default 0)")
    hosts.add_argument("--dpu-strategy", default="row_uniform", help="strategy within each host (default row_uniform)")
    hosts.add_argument("--split-share", type=float, default=None,
                       help="cut a table into row ranges when one copy would carry more than this share of a host's "
                            "lookups or table MRAM (default partition.hosts.SPLIT_SHARE: 0.5)")
    hosts.add_argument("--uniform", action="store_true", help="uniform access, no trace (for models too big to profile here)")
    hosts.add_argument("--net-gbps", type=float, default=None, help="link bandwidth, Gb/s (default partition.hosts.NETWORK_BYTES_PER_S: 100, assumed)")
    hosts.add_argument("--net-rtt-us", type=float, default=None, help="RPC round trip, us (default partition.hosts.NETWORK_RTT_US: 50, assumed)")
    p.add_argument("--sweep", action="store_true", help="run the grid below instead of one comparison")
    p.add_argument("--sweep-dpus", type=_ints, default=[64, 256, 1024, 2048, 2560], help="DPU counts (default 64,256,1024,2048,2560)")
    p.add_argument("--sweep-alphas", type=_floats, default=[0.6, 1.05, 1.4], help="Zipf alphas (default 0.6,1.05,1.4)")
    p.add_argument("--sweep-batch-sizes", type=_ints, default=[2048], help="batch sizes (default 2048)")
    p.add_argument("--out", default="partition_sweep", help="output prefix for --sweep: PREFIX.csv, PREFIX_*.png")
    p.set_defaults(func=run)


def run(args) -> int:
    from updlrm import configs
    from updlrm.partition import PlanError, Topology, make_plan, save_plan
    from updlrm.partition.cost import CostEstimator, SimpleLatency
    from updlrm.partition.lab import compare, format_reports, plot_sweep, sweep, write_csv, zipf_workload

    try:
        cfg = configs.get(args.model, row_scale=args.row_scale)
    except (KeyError, ValueError) as exc:
        print(f"updlrm partition: {exc}", file=sys.stderr)
        return 2
    tables = list(cfg.tables)
    est = CostEstimator(SimpleLatency() if args.latency == "simple" else None)
    strategies = args.strategies.split(",") if args.strategies else None
    from updlrm.partition.lab import LAB_OPTIONS

    options = {k: dict(v) for k, v in LAB_OPTIONS.items()}
    for strat, name, value in args.options:
        options.setdefault(strat, {})[name] = value
    if args.hosts is not None:
        return _run_hosts(args, cfg, tables, est, options)
    try:
        if args.sweep:
            rows = sweep(lambda: tables, args.sweep_dpus, args.sweep_alphas, args.sweep_batch_sizes, strategies,
                         pooling=args.pooling, profile_batches=args.profile_batches, eval_batches=args.eval_batches,
                         seed=args.seed, estimator=est, options=options, progress=lambda m: print(m, file=sys.stderr),
                         dtype=args.dtype)
            write_csv(rows, f"{args.out}.csv")
            files = plot_sweep(rows, args.out)
            print(f"wrote {args.out}.csv ({len(rows)} rows)" + "".join(f", {f}" for f in files))
            return 0
        print(f"drawing {args.profile_batches} + {args.eval_batches} batches of Zipf({args.alpha}) lookups", file=sys.stderr)
        wl = zipf_workload(tables, args.alpha, args.pooling, args.batch_size, args.profile_batches,
                           args.eval_batches, args.seed)
        topo = Topology(nr_dpus=args.dpus)
        rows = compare(tables, topo, wl, args.batch_size, strategies, est, options,
                       progress=None if args.json else (lambda m: print(m, file=sys.stderr)), dtype=args.dtype)
        if args.json:
            print(json.dumps(rows, indent=1, default=str))
        else:
            print(f"model {cfg.name} ({len(tables)} tables, {sum(t.rows for t in tables):,} rows, {args.dtype}), "
                  f"{args.dpus:,} DPUs, batch {args.batch_size:,}, pooling {args.pooling}, Zipf alpha {args.alpha}")
            print(format_reports(rows))
        if rows and all(r.get("error") for r in rows):
            print("updlrm partition: no strategy could place the model (see above)", file=sys.stderr)
            return 1
        if args.save_plan:
            plan = make_plan(tables, topo, args.plan_strategy, profile=wl.profile, dtype=args.dtype,
                             **options.get(args.plan_strategy, {}))
            save_plan(plan, args.save_plan)
            print(f"saved the {args.plan_strategy} plan to {args.save_plan}")
    except PlanError as exc:
        print(f"updlrm partition: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_hosts(args, cfg, tables, est, options) -> int:
    """``--hosts``: one two-level plan, its per-host report, and --save-plan."""
    from updlrm.partition import PlanError
    from updlrm.partition.hosts import NetworkModel, format_host_report, host_lab, save_host_plan
    from updlrm.partition.lab import zipf_workload

    defaults = NetworkModel()
    net = NetworkModel(bytes_per_s=args.net_gbps * 1e9 / 8 if args.net_gbps else defaults.bytes_per_s,
                       rtt_us=args.net_rtt_us if args.net_rtt_us is not None else defaults.rtt_us,
                       source=defaults.source if args.net_gbps is None and args.net_rtt_us is None else "set on the command line")
    try:
        wl = None
        if not args.uniform:
            print(f"drawing {args.profile_batches} + {args.eval_batches} batches of Zipf({args.alpha}) lookups", file=sys.stderr)
            wl = zipf_workload(tables, args.alpha, args.pooling, args.batch_size, args.profile_batches,
                               args.eval_batches, args.seed)
        plan, report = host_lab(tables, args.hosts, args.dpus_per_host or args.dpus, args.replicas, wl, args.batch_size,
                                args.dpu_strategy, args.hot_rows, args.pooling, net, est,
                                dpu_options=options.get(args.dpu_strategy, {}),
                                **({"split_share": args.split_share} if args.split_share else {}))
    except PlanError as exc:
        print(f"updlrm partition: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"plan": plan.summary(), **report}, indent=1, default=str))
    else:
        access = "uniform access" if wl is None else f"Zipf alpha {args.alpha}, profiled on trace A, evaluated on trace B"
        print(f"model {cfg.name} ({len(tables)} tables, {sum(t.rows for t in tables):,} rows), batch {args.batch_size:,}, "
              f"pooling {args.pooling}, {access}")
        print(format_host_report(plan, report))
    if args.save_plan:
        save_host_plan(plan, args.save_plan)
        print(f"saved the host plan to {args.save_plan}")
    return 0
