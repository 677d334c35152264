"""`updlrm trace`: inspect, generate and convert embedding-lookup traces.

    updlrm trace stats FILE [--tables 0,3] [--plot cdf.png] [--json stats.json]
    updlrm trace gen OUT.pt[.gz] --tables 8 --rows 1000000 --samples 65536 --alpha 1.1 --pooling uniform:1,40
    updlrm trace from-criteo day_0.gz OUT.pt --convention torchrec --table-rows kaggle --max-samples 1000000

Trace files use the dlrm_datasets layout (torch-saved (indices, offsets, lengths); see
updlrm.data.trace). Exit codes: 0 ok, 2 bad arguments or unreadable input.
"""

from __future__ import annotations

import json
import sys


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None


def _table_list(text: str | None):
    if not text:
        return None
    return [int(x) if x.strip().lstrip("-").isdigit() else x.strip() for x in text.split(",") if x.strip()]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "trace",
        help="embedding-lookup traces: statistics, synthetic generation, Criteo conversion",
        description="Inspect, generate and convert embedding-lookup traces (dlrm_datasets layout).",
    )
    sub = p.add_subparsers(dest="trace_command", metavar="ACTION")

    s = sub.add_parser("stats", help="per-table rows touched, pooling, hot-set coverage, reuse; access CDF plot")
    s.add_argument("file", help="trace file (torch-saved (indices, offsets, lengths), plain or gzip)")
    s.add_argument("--tables", default=None, help="comma-separated table positions or names (default all)")
    s.add_argument("--table-rows", default=None, help="comma-separated row counts (default: meta file or max id + 1)")
    s.add_argument("--plot", default=None, help="write the access CDF plot to this PNG")
    s.add_argument("--plot-tables", type=int, default=8, help="tables in the plot (most lookups first; default 8)")
    s.add_argument("--json", default=None, help="also write the statistics as JSON to this file")
    s.add_argument("--stack-sample", type=int, default=100_000,
                   help="lookups per table used for exact LRU stack distances (0 = skip; default 100000)")
    s.set_defaults(func=run_stats)

    g = sub.add_parser("gen", help="write a seeded synthetic trace (Zipf skew, pooling, co-access, drift)")
    g.add_argument("out", help="output file (.pt, or .pt.gz for gzip)")
    g.add_argument("--tables", type=int, default=8, help="number of tables (default 8)")
    g.add_argument("--rows", default="1000000", help="rows per table: one value or one per table (default 1000000)")
    g.add_argument("--samples", type=int, default=65536, help="samples (B) in the trace (default 65536)")
    g.add_argument("--alpha", default="1.05", help="Zipf exponent: one value or one per table (default 1.05)")
    g.add_argument("--pooling", default="fixed:20",
                   help="fixed:L | uniform:LO,HI | profile:TRACEFILE[:TABLE] (default fixed:20)")
    g.add_argument("--coaccess", default=None, help="GROUPS,SIZE,PROB: co-accessed row groups (e.g. 64,4,0.3)")
    g.add_argument("--drift", default=None, help="PERIOD,SHIFT: every PERIOD samples shift the hot set by SHIFT ranks")
    g.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    g.set_defaults(func=run_gen)

    c = sub.add_parser("from-criteo", help="convert a Criteo text file (plain or gzip) to a trace file")
    c.add_argument("file", help="Criteo Kaggle/Terabyte text file")
    c.add_argument("out", help="output trace file (.pt or .pt.gz)")
    c.add_argument("--convention", choices=("dlrm", "torchrec"), default="torchrec", help="id preprocessing")
    c.add_argument("--table-rows", default="kaggle",
                   help="kaggle | terabyte | 26 comma-separated sizes (hash moduli for torchrec; default kaggle)")
    c.add_argument("--max-ind-range", type=int, default=None, help="dlrm: ids modulo this")
    c.add_argument("--max-samples", type=int, default=None, help="stop after this many samples")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_from_criteo)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _err(msg: str) -> int:
    print(f"updlrm trace: error: {msg}", file=sys.stderr)
    return 2


def run_stats(args) -> int:
    from updlrm.data import format_stats, load_trace, plot_access_cdf, trace_stats

    try:
        rows = _ints(args.table_rows, "--table-rows") if args.table_rows else None
        trace = load_trace(args.file, table_rows=rows)
        stats = trace_stats(trace, _table_list(args.tables), stack_sample=args.stack_sample)
    except (ValueError, FileNotFoundError) as exc:
        return _err(str(exc))
    print(f"{args.file}: {trace.nr_tables} tables, {trace.batch_size:,} samples, {trace.nr_lookups:,} lookups")
    print(format_stats(stats))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([s.to_dict() for s in stats], f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot_access_cdf(trace, args.plot, tables=_table_list(args.tables), max_tables=args.plot_tables)
        print(f"wrote {args.plot}")
    return 0


def _per_table(text: str, n: int, cast, what: str) -> list:
    vals = [cast(x) for x in text.split(",") if x.strip()]
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise ValueError(f"{what}: give one value or {n} (one per table), got {len(vals)}")
    return vals


def _workloads(args):
    from updlrm.data import CoAccess, Drift, TableWorkload, load_trace, pooling_profile

    if args.tables < 1:
        raise ValueError(f"--tables must be >= 1, got {args.tables}")
    rows = _per_table(args.rows, args.tables, int, "--rows")
    alphas = _per_table(args.alpha, args.tables, float, "--alpha")
    kind, _, spec = args.pooling.partition(":")
    pooling: list[dict] = []
    if kind == "fixed":
        pooling = [dict(pooling="fixed", pooling_factor=int(spec or 20))] * args.tables
    elif kind == "uniform":
        lo, hi = _ints(spec, "--pooling uniform")
        pooling = [dict(pooling="uniform", pooling_min=lo, pooling_max=hi)] * args.tables
    elif kind == "profile":
        path, _, table = spec.partition(":")
        src = load_trace(path)
        if table:
            prof = pooling_profile(src, int(table) if table.isdigit() else table)
            pooling = [dict(pooling="profile", pooling_profile=prof)] * args.tables
        else:  # table t follows source table t mod T_src
            pooling = [
                dict(pooling="profile", pooling_profile=pooling_profile(src, t % src.nr_tables))
                for t in range(args.tables)
            ]
    else:
        raise ValueError(f"--pooling must be fixed:L, uniform:LO,HI or profile:FILE[:TABLE], got {args.pooling!r}")
    coaccess = None
    if args.coaccess:
        parts = args.coaccess.split(",")
        if len(parts) != 3:
            raise ValueError(f"--coaccess needs GROUPS,SIZE,PROB, got {args.coaccess!r}")
        coaccess = CoAccess(int(parts[0]), int(parts[1]), float(parts[2]))
    drift = None
    if args.drift:
        period, shift = _ints(args.drift, "--drift")
        drift = Drift(period, shift)
    return [
        TableWorkload(rows=r, alpha=a, coaccess=coaccess, drift=drift, **pool)
        for r, a, pool in zip(rows, alphas, pooling)
    ]


def run_gen(args) -> int:
    from updlrm.data import save_trace, synthetic_trace

    try:
        tables = _workloads(args)
        trace = synthetic_trace(tables, args.samples, seed=args.seed)
        save_trace(trace, args.out)
    except (ValueError, FileNotFoundError) as exc:
        return _err(str(exc))
    print(f"wrote {args.out}: {trace.nr_tables} tables, {trace.batch_size:,} samples, {trace.nr_lookups:,} lookups")
    return 0


def _criteo_rows(text: str) -> list[int]:
    from updlrm.configs import KAGGLE_ROWS, TERABYTE_ROWS

    if text == "kaggle":
        return list(KAGGLE_ROWS)
    if text == "terabyte":
        return list(TERABYTE_ROWS)
    return _ints(text, "--table-rows")


def run_from_criteo(args) -> int:
    from updlrm.data import CriteoReader, save_trace

    try:
        rows = _criteo_rows(args.table_rows)
        reader = CriteoReader(
            args.file,
            args.convention,
            table_rows=rows if args.convention == "torchrec" else None,
            max_ind_range=args.max_ind_range,
            max_samples=args.max_samples,
            progress=None if not args.quiet else False,
        )
        trace = reader.to_trace()
        save_trace(trace, args.out)
    except (ValueError, FileNotFoundError) as exc:
        return _err(str(exc))
    print(reader.report())
    print(f"wrote {args.out}: {trace.nr_tables} tables, {trace.batch_size:,} samples")
    return 0
