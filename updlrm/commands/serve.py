"""`updlrm serve`: run the HTTP inference server (dynamic batching) for a model on a backend."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve predictions over HTTP with dynamic batching",
        description="HTTP inference server: POST /v1/predict, GET /healthz, /metrics, /v1/model, /docs. "
                    "Binds to 127.0.0.1 unless --host says otherwise. Stops gracefully on SIGTERM.")
    p.add_argument("--model", default="tiny", help="named config (tiny, kaggle, terabyte, ...) or a checkpoint file")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="checkpoint files: settle what the tensors leave open (interaction=dot|cat, "
                        "interaction_itself=, final_sigmoid=true|false, pooling=sum); repeatable")
    p.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "pim"))
    p.add_argument("--plan", default=None, help="plan file for the pim backend (default: --strategy over --nr-dpus)")
    p.add_argument("--strategy", default="row_uniform", help="partitioning strategy when no --plan (pim)")
    p.add_argument("--nr-dpus", type=int, default=64, help="DPUs for the pim backend when no --plan")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "int32"), help="PIM table element type")
    p.add_argument("--row-scale", type=float, default=1.0, help="scale table rows of a named config (e.g. 1e-3)")
    p.add_argument("--max-rows", type=int, default=None, help="cap table rows of a named config")
    p.add_argument("--seed", type=int, default=None, help="parameter seed of a named config")
    p.add_argument("--max-batch", type=int, default=64, help="most samples per engine batch")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="longest a request waits for its batch to fill")
    p.add_argument("--max-queue", type=int, default=1024, help="samples waiting before requests get 503")
    p.add_argument("--max-request-samples", type=int, default=1024, help="most samples in one request")
    p.add_argument("--max-body-bytes", type=int, default=16 << 20,
                   help="largest request body (413 above; a chunked body is not read past it)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads of the engine (0: torch default); 1 suits small batches")
    p.add_argument("--engine-process", action="store_true",
                   help="run the engine in its own process (no GIL shared with the HTTP event loop); if it "
                        "dies, only its batch fails and a new one is started")
    p.add_argument("--engine-max-restarts", type=int, default=3,
                   help="--engine-process: restarts allowed within 60 s before the server reports failed")
    g = p.add_argument_group("limits and timeouts")
    g.add_argument("--batch-timeout", type=float, default=30.0,
                   help="seconds an engine batch may run; past it the batch fails with 504, /healthz says "
                        "stuck, and an --engine-process engine is killed and replaced")
    g.add_argument("--header-timeout", type=float, default=10.0, help="seconds to receive a request's headers")
    g.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive a request's body")
    g.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle connection is kept open")
    g.add_argument("--max-connections", type=int, default=None,
                   help="open connections; more are refused with 503 (default 4096, lowered to fit the "
                        "file-descriptor limit)")
    g.add_argument("--max-header-bytes", type=int, default=16 << 10, help="request line + headers, in bytes (431 above)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds a graceful stop waits for requests in progress before closing their connections")
    ray = p.add_argument_group("scale-out over Ray (updlrm.distributed)")
    ray.add_argument("--ray", metavar="ADDRESS", default=None,
                     help="serve the model across shard servers on Ray: 'local' starts a local cluster, else a "
                          "cluster address ('auto', 'HOST:6379'); --backend is the shard servers' backend")
    ray.add_argument("--hosts", type=int, default=2, help="--ray: shard servers (hosts) when no --host-plan (default 2)")
    ray.add_argument("--replicas", type=int, default=1, help="--ray: copies of every shard on distinct hosts (default 1)")
    ray.add_argument("--dpus-per-host", type=int, default=64, help="--ray, pim: DPUs per host when no --host-plan")
    ray.add_argument("--host-plan", default=None, help="--ray: host plan file (updlrm partition --hosts ... --save-plan)")
    ray.add_argument("--device", default="emulator", choices=("emulator", "simulator", "hw"),
                     help="--ray, pim: DPUs of the shard servers (hw on real UPMEM hosts)")
    ray.add_argument("--host-resource", default=None, metavar="NAME",
                     help="--ray: Ray custom resource each UPMEM host offers (ray start --resources '{\"upmem\": 1}'): "
                          "one shard server per such host")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: pick a free one; the chosen port is printed)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def run(args) -> int:
    from updlrm.serving.loader import ServeSettings
    from updlrm.serving.protocol import ServerLimits
    from updlrm.serving.server import run_server

    settings = ServeSettings(
        model=args.model, backend=args.backend, plan=args.plan, strategy=args.strategy, nr_dpus=args.nr_dpus,
        dtype=args.dtype, row_scale=args.row_scale, max_rows=args.max_rows, seed=args.seed,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_request_samples=args.max_request_samples, max_body_bytes=args.max_body_bytes,
        torch_threads=args.torch_threads, host=args.host, port=args.port,
        engine_max_restarts=args.engine_max_restarts)
    limits = ServerLimits(header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                          keep_alive_s=args.keep_alive, max_connections=args.max_connections,
                          max_header_bytes=args.max_header_bytes, shutdown_timeout_s=args.shutdown_timeout,
                          batch_timeout_s=args.batch_timeout)
    try:
        settings.check()
        limits.check()
        import os

        from updlrm import configs

        if not os.path.exists(settings.model) and settings.model not in configs.names():
            raise ValueError(f"--model {settings.model!r} is neither a file nor a named config "
                             f"({', '.join(configs.names())})")
        from updlrm.serving.loader import parse_model_options

        settings.model_options = parse_model_options(args.model_option)
    except ValueError as exc:
        print(f"updlrm serve: {exc}", file=sys.stderr)
        return 2
    if args.ray is not None:
        from updlrm.distributed.app import RaySettings, run_ray_server

        wrong = [f for f, given in (("--plan (use --host-plan)", args.plan), ("--engine-process", args.engine_process))
                 if given]
        if wrong:
            print(f"updlrm serve: {', '.join(wrong)} do(es) not apply with --ray", file=sys.stderr)
            return 2

        rs = RaySettings(address=args.ray, hosts=args.hosts, replicas=args.replicas, dpus_per_host=args.dpus_per_host,
                         dpu_strategy=args.strategy, host_plan=args.host_plan, device=args.device,
                         host_resource=args.host_resource)
        try:
            rs.check()
            return run_ray_server(settings, rs, log_level=args.log_level)
        except (ValueError, OSError) as exc:
            print(f"updlrm serve: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, ValueError) else 1
    try:
        if args.engine_process:
            from updlrm.serving.engine_process import load_model_in_process

            return run_server(settings, load_model_in_process, log_level=args.log_level, limits=limits)
        return run_server(settings, log_level=args.log_level, limits=limits)
    except OSError as exc:
        print(f"updlrm serve: {exc}", file=sys.stderr)
        return 1
