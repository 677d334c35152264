"""`updlrm bench`: CPU vs CPU-GPU vs PIM latency on the same model and batches (see updlrm.bench)."""

from __future__ import annotations

import sys


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(subparsers) -> None:
    from updlrm.partition import strategy_names

    p = subparsers.add_parser(
        "bench", help="benchmark CPU vs CPU-GPU vs PIM (modeled) latency",
        description="Run the same model and batches on each backend, sweeping batch size, DPU count and "
                    "strategy. CPU/GPU times are measured here; PIM DPU phases are modeled by the UPMEM "
                    "timing model from the emulator's exact counters (host phases measured). Prints a table "
                    "(latencies in ms: p50/p90/p99 over the repeats) and writes bench.json, bench.csv and "
                    "PNG plots into --out. Options given here override --config-file.")
    p.add_argument("--model", default=None,
                   help="named model config: tiny, kaggle, terabyte, mlperf, synthetic (default kaggle, with --max-rows 2000000)")
    p.add_argument("--config-file", metavar="FILE", default=None,
                   help="bench config JSON whose keys are those of updlrm.bench.BenchConfig (default: none)")
    p.add_argument("--row-scale", type=float, default=None,
                   help="multiply every table's rows by this factor, e.g. 1e-3 (default 1: full size)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="cap every table's rows, as dlrm's --max-ind-range (default 2000000; 0: no cap)")
    p.add_argument("--batch-sizes", default=None,
                   help="samples per batch, comma-separated (default 256,1024,4096)")
    p.add_argument("--pooling", type=int, default=None, help="lookups per bag, i.e. per table and sample (default 20)")
    p.add_argument("--alpha", type=float, default=None, help="Zipf exponent of the ids, 0 = uniform (default 1.05)")
    p.add_argument("--backends", default=None,
                   help="comma-separated from cpu, cuda (= cuda-hybrid + cuda-gpu), cuda-hybrid, cuda-gpu, pim "
                        "(default: all; those that cannot run here are listed unavailable)")
    p.add_argument("--nr-dpus", default=None, help="DPU counts for pim, comma-separated (default 2560)")
    p.add_argument("--strategies", default=None,
                   help=f"partitioning strategies for pim, comma-separated from {', '.join(strategy_names())} "
                        "(default row_uniform,cache_aware)")
    p.add_argument("--plan", metavar="FILE", default=None,
                   help="benchmark pim with a saved plan (`updlrm partition --save-plan FILE`) instead of "
                        "--nr-dpus/--strategies/--nr-tasklets; it must match the model's table shapes "
                        "(default: none)")
    p.add_argument("--dtype", default=None, choices=("fp32", "int32", "int16", "int8"),
                   help="element type of the tables on the DPUs: fp32, or int32 / int16 / int8 integers summed in "
                        "int32 (default int32)")
    p.add_argument("--device", default=None, choices=("emulator", "simulator", "hw"),
                   help="pim device (default emulator: DPU phases modeled; simulator/hw need the SDK build)")
    p.add_argument("--nr-tasklets", type=int, default=None, help="tasklets per DPU (default 16)")
    p.add_argument("--warmup", type=int, default=None, help="batches run and discarded per point (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="measured batches per point (default 5)")
    p.add_argument("--seed", type=int, default=None, help="batch seed; batch i uses seed + i (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--timing-constants", metavar="FILE", default=None,
                   help="JSON overriding the timing model's constants (default: the built-in constants)")
    p.add_argument("--show-constants", action="store_true",
                   help="print the timing model's constants with unit, source and status, then exit")
    p.add_argument("--out", metavar="DIR", default="bench_out",
                   help="output folder for bench.json, bench.csv and the plots (default bench_out)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (default: write them)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: a progress bar on stderr)")
    p.set_defaults(func=run)


def show_constants(path: str | None) -> int:
    from updlrm.timing_model import TimingModel

    try:
        model = TimingModel.from_file(path) if path else TimingModel.default()
    except ValueError as exc:
        print(f"updlrm bench: {exc}", file=sys.stderr)
        return 2
    for c in model.describe():
        print(f"{c['name']:34s} {c['value']:<12g} [{c.get('status', '?')}] {c.get('unit', '')}")
        print(f"{'':34s} source: {c.get('source', '?')}")
    return 0


def run(args) -> int:
    from updlrm.bench import BenchConfig, format_table, load_bench_config, run_bench, write_outputs

    if args.show_constants:
        return show_constants(args.timing_constants)

    if args.plan and (args.nr_dpus or args.strategies or args.nr_tasklets is not None):
        print("updlrm bench: --plan fixes the DPU count, the strategy and the tasklets: drop --nr-dpus / "
              "--strategies / --nr-tasklets", file=sys.stderr)
        return 2
    try:
        overrides = {
            "model": args.model, "row_scale": args.row_scale, "max_rows": args.max_rows or None,
            "batch_sizes": _ints(args.batch_sizes) if args.batch_sizes else None,
            "pooling": args.pooling, "alpha": args.alpha,
            "backends": args.backends.split(",") if args.backends else None,
            "nr_dpus": _ints(args.nr_dpus) if args.nr_dpus else None,
            "strategies": args.strategies.split(",") if args.strategies else None,
            "dtype": args.dtype, "device": args.device, "nr_tasklets": args.nr_tasklets, "warmup": args.warmup,
            "repeats": args.repeats, "seed": args.seed, "timing_constants": args.timing_constants,
            "threads": args.threads, "plan": args.plan,
        }
        if args.config_file:
            cfg = load_bench_config(args.config_file, **overrides)
        else:
            cfg = BenchConfig(**{k: v for k, v in overrides.items() if v is not None})
        if args.max_rows == 0:  # --max-rows 0: the tables at their full size
            cfg.max_rows = None
    except (ValueError, TypeError) as exc:
        print(f"updlrm bench: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_bench(cfg, progress=not args.quiet)
    except ValueError as exc:  # bad model config, bad timing constants, bad strategy ...
        print(f"updlrm bench: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    paths = write_outputs(result, args.out, plots=not args.no_plots)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [r for r in result.runs if r["status"] == "failed"]
    return 1 if failed else 0
