"""`updlrm loadtest`: drive a running `updlrm serve` with concurrent predict requests and report
QPS, latency percentiles, errors by kind, and whether every request got exactly one answer."""

from __future__ import annotations

import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "loadtest", help="load-test a running updlrm server",
        description="Closed-loop load test: CONCURRENCY keep-alive connections send predict requests until "
                    "REQUESTS are sent or DURATION seconds pass. Loopback URLs only unless --allow-remote.")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent connections (<= 1024)")
    p.add_argument("--requests", type=int, default=2000, help="stop after this many requests (<= 10,000,000)")
    p.add_argument("--duration", type=float, default=30.0, help="stop after this many seconds (<= 3600)")
    p.add_argument("--samples-per-request", type=int, default=1, help="samples in each request")
    p.add_argument("--lookups", type=int, default=1, help="ids per bag in each sample")
    p.add_argument("--format", default="samples", choices=("samples", "columnar", "msgpack"),
                   help="request body: JSON samples, a JSON columnar batch, or that batch in MessagePack")
    p.add_argument("--warmup", type=int, default=0, help="untimed requests before the clock starts")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback server")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from updlrm.serving.loadtest import run_loadtest

    try:
        report = run_loadtest(args.url, concurrency=args.concurrency, requests=args.requests,
                              duration_s=args.duration, samples_per_request=args.samples_per_request,
                              lookups=args.lookups, seed=args.seed, timeout_s=args.timeout,
                              allow_remote=args.allow_remote, warmup_requests=args.warmup, body_format=args.format)
    except ValueError as exc:
        print(f"updlrm loadtest: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - OSError, httpx errors: the server could not be asked for its model
        import httpx

        if not isinstance(exc, (OSError, httpx.HTTPError)):
            raise
        print(f"updlrm loadtest: cannot reach {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.every_request_answered_once else 1
