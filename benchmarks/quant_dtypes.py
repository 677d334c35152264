"""Embedding tables in fp32 / int32 / int16 / int8 on the DPUs: accuracy of a trained DLRM and what
each dtype costs on the DPU side, in one run.

1. **Train.** A Kaggle-shaped DLRM (26 tables, dim 16, Kaggle's MLPs; rows scaled by
   ``--row-scale``) is trained for ``--epochs`` on a seeded synthetic click dataset labelled by a
   hidden teacher DLRM over Zipf ids (:mod:`updlrm.train`).
2. **Accuracy** on held-out samples, per dtype and scale granularity (per table; per column group
   of ``--group-cols``; per group calibrated on the training set's access counts): AUC and log
   loss on the *cpu reference* (a CPU DLRM whose tables are the dequantized integers
   ``q / s``) and on the *pim backend* (emulated DPUs, ``--acc-dpus``), the largest probability
   difference from the fp32 model, and the largest pim-vs-cpu-reference difference; and a table
   quantized row-wise to int8 by FBGEMM's rule (TorchRec's INT8 scheme) then requantized to ours.
3. **Cost** of each dtype on the trained model at 64 and 2,560 DPUs (row_uniform, per-table
   scales), on Zipf batches of ``--batch-size`` x ``--pooling``: MRAM bytes of tables on the
   fullest DPU, DMA reads (ops, bytes, bytes per DMA: request staging included), bytes pulled,
   modeled DPU time (:class:`updlrm.timing_model.TimingModel`) and emulator wall time of the
   kernel phase (medians over ``--repeats`` batches after one warm-up).

Writes ``--out``.json (everything, with the machine and its load average) and ``--out``.md (the
tables). About 2-3 minutes on 2 cores::

    .venv/bin/python benchmarks/quant_dtypes.py --out benchmarks/results/dtypes/dtypes
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch

from updlrm import configs
from updlrm.batch import random_batch
from updlrm.bench import machine_info
from updlrm.engine import Engine
from updlrm.pim.quant import dequantize_rowwise, rowwise_int8
from updlrm.timing_model import TimingModel
from updlrm.train import TeacherClicks, auc_score, log_loss, predict, train_dlrm

#: (label, dtype, quant, calibrated) of the accuracy study.
VARIANTS = [
    ("fp32", "fp32", "table", False),
    ("int32 per table", "int32", "table", False),
    ("int32 group-wise", "int32", "group", False),
    ("int16 per table", "int16", "table", False),
    ("int16 group-wise", "int16", "group", False),
    ("int8 per table", "int8", "table", False),
    ("int8 group-wise", "int8", "group", False),
    ("int8 group-wise, calibrated", "int8", "group", True),
]
COST_DTYPES = ("fp32", "int32", "int16", "int8")


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _engine_probs(engine: Engine, data, batch_size: int = 4096) -> np.ndarray:
    out = np.empty(data.n, dtype=np.float64)
    for lo, hi, b in data.batches(batch_size):
        out[lo:hi] = engine.predict(b).double().numpy()
    return out


def _dequantized_model(model, quant):
    """A CPU copy of ``model`` whose tables are the stored integers divided by their scales."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for t, bag in enumerate(ref.embeddings):
            w = bag.weight.detach().numpy()
            bag.weight.copy_(torch.from_numpy(quant.dequantize(t, quant.quantize(t, w)).astype(np.float32)))
    return ref.eval()


def accuracy(model, cfg, train, test, args) -> list[dict]:
    counts = train.access_counts([t.rows for t in cfg.tables])
    p_fp32 = predict(model, test)
    rows = []
    for label, dtype, quant, calibrated in VARIANTS:
        _progress(f"accuracy: {label} on {args.acc_dpus} emulated DPUs")
        opts = {"max_bag_lookups": args.max_bag_lookups}
        if dtype != "fp32":
            opts.update(quant=quant, group_cols=args.group_cols)
            if calibrated:
                opts.update(calibrate_on=counts, coverage=args.coverage)
        with Engine(model, backend="pim", nr_dpus=args.acc_dpus, dtype=dtype, **opts) as eng:
            p_pim = _engine_probs(eng, test)
            qz = eng.backend.pim.quant
        p_ref = p_fp32 if qz is None else predict(_dequantized_model(model, qz), test)
        rows.append({
            "variant": label, "dtype": dtype, "quant": quant if dtype != "fp32" else None, "calibrated": calibrated,
            "auc_cpu_ref": auc_score(test.labels, p_ref), "log_loss_cpu_ref": log_loss(test.labels, p_ref),
            "auc_pim": auc_score(test.labels, p_pim), "log_loss_pim": log_loss(test.labels, p_pim),
            "max_prob_diff_vs_fp32": float(np.abs(p_pim - p_fp32).max()),
            "mean_prob_diff_vs_fp32": float(np.abs(p_pim - p_fp32).mean()),
            "max_prob_diff_pim_vs_cpu_ref": float(np.abs(p_pim - p_ref).max()),
            "max_element_error": None if qz is None else qz.describe()["max_element_error"],
        })
    # A table that arrives row-wise int8 (FBGEMM's / TorchRec's scheme, rule implemented in
    # updlrm.pim.quant): its own lookup (cpu ref) against the same table requantized to our int8
    # group-wise format on the DPUs.
    _progress("accuracy: row-wise int8 tables requantized to int8 group-wise")
    rw = copy.deepcopy(model)
    with torch.no_grad():
        for bag in rw.embeddings:
            bag.weight.copy_(torch.from_numpy(dequantize_rowwise(*rowwise_int8(bag.weight.detach().numpy()))))
    rw.eval()
    p_ref = predict(rw, test)
    with Engine(rw, backend="pim", nr_dpus=args.acc_dpus, dtype="int8", quant="group", group_cols=args.group_cols,
                max_bag_lookups=args.max_bag_lookups) as eng:
        p_pim = _engine_probs(eng, test)
        qz = eng.backend.pim.quant
    rows.append({
        "variant": "row-wise int8 (FBGEMM rule) -> int8 group-wise", "dtype": "int8", "quant": "group",
        "calibrated": False, "rowwise_source": True,
        "auc_cpu_ref": auc_score(test.labels, p_ref), "log_loss_cpu_ref": log_loss(test.labels, p_ref),
        "auc_pim": auc_score(test.labels, p_pim), "log_loss_pim": log_loss(test.labels, p_pim),
        "max_prob_diff_vs_fp32": float(np.abs(p_pim - p_fp32).max()),
        "mean_prob_diff_vs_fp32": float(np.abs(p_pim - p_fp32).mean()),
        "max_prob_diff_pim_vs_cpu_ref": float(np.abs(p_pim - p_ref).max()),
        "max_element_error": qz.describe()["max_element_error"],
    })
    return rows


def cost(model, cfg, args) -> list[dict]:
    tm = TimingModel.default()
    batches = [random_batch(cfg, args.batch_size, pooling=args.pooling, alpha=args.alpha, seed=500 + i)
               for i in range(args.repeats + 1)]
    rows = []
    for nr_dpus in args.cost_dpus:
        for dtype in COST_DTYPES:
            _progress(f"cost: {dtype} on {nr_dpus} emulated DPUs, {args.repeats} batches of {args.batch_size}")
            t0 = time.perf_counter()
            with Engine(model, backend="pim", nr_dpus=nr_dpus, dtype=dtype, max_bag_lookups=args.max_bag_lookups) as eng:
                load_s = time.perf_counter() - t0
                pim = eng.backend.pim
                rec = {k: [] for k in ("read_ops", "read_bytes", "write_bytes", "pulled_bytes", "kernel_model_s",
                                       "dpu_model_s", "kernel_emu_wall_s", "embed_wall_s")}
                for i, b in enumerate(batches):
                    t1 = time.perf_counter()
                    eng.embed(b)
                    wall = time.perf_counter() - t1
                    if i == 0:
                        continue  # warm-up
                    c = pim.last_stats.counters
                    mb = tm.model_counters(eng.plan.topology, c, eng.plan)
                    rec["read_ops"].append(float(np.sum(c["dma_read_ops"])))
                    rec["read_bytes"].append(float(np.sum(c["dma_read_bytes"])))
                    rec["write_bytes"].append(float(np.sum(c["dma_write_bytes"])))
                    rec["pulled_bytes"].append(float(np.sum(c["pulled_bytes"])))
                    rec["kernel_model_s"].append(mb.get("kernel").seconds)
                    rec["dpu_model_s"].append(mb.seconds)
                    rec["kernel_emu_wall_s"].append(pim.last_stats.get("kernel").seconds)
                    rec["embed_wall_s"].append(wall)
                med = {k: float(np.median(v)) for k, v in rec.items()}
                rows.append({
                    "nr_dpus": nr_dpus, "dtype": dtype, "row_bytes": 16 * {"fp32": 4, "int32": 4, "int16": 2, "int8": 1}[dtype],
                    "mram_table_bytes_max": int(max(pim.load_stats["mram_bytes_per_dpu"])),
                    "dma_read_ops": med["read_ops"], "dma_read_bytes": med["read_bytes"],
                    "bytes_per_read_dma": med["read_bytes"] / max(med["read_ops"], 1.0),
                    "dma_write_bytes": med["write_bytes"], "pulled_bytes": med["pulled_bytes"],
                    "kernel_modeled_ms": med["kernel_model_s"] * 1e3, "dpu_side_modeled_ms": med["dpu_model_s"] * 1e3,
                    "kernel_emulator_wall_ms": med["kernel_emu_wall_s"] * 1e3, "embed_wall_ms": med["embed_wall_s"] * 1e3,
                    "load_s": load_s, "kernel_limiter": mb.get("kernel").detail.get("limiter"),
                })
    return rows


def _md(res: dict) -> str:
    a = res["accuracy"]
    c = res["cost"]
    m = res["machine"]
    args = res["args"]
    acc_by = {r["dtype"]: r for r in a if r["quant"] in (None, "table") and not r.get("rowwise_source")}
    L = ["# Embedding table dtypes on the DPUs: accuracy and cost", ""]
    L.append(f"Trained Kaggle-shaped DLRM (26 tables, dim 16, rows x {args['row_scale']:g}): held-out AUC and log loss "
             f"on the pim backend ({args['acc_dpus']} emulated DPUs, per-table scales, 1 id per table). DPU side on "
             f"{args['cost_dpus'][-1]:,} DPUs, batch {args['batch_size']:,} x pooling {args['pooling']}, medians over "
             f"{args['repeats']} batches: DMA counts are the emulator's, DPU time is modeled.")
    L.append("")
    big = [r for r in c if r["nr_dpus"] == args["cost_dpus"][-1]]
    L.append("| dtype | row B (d=16) | AUC | log loss | max abs prob. diff vs fp32 | DMA read B | bytes / read DMA | "
             "bytes pulled | DPU time, modeled |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in big:
        x = acc_by.get(r["dtype"])
        L.append(f"| {r['dtype']} | {r['row_bytes']} | {x['auc_pim']:.4f} | {x['log_loss_pim']:.4f} | "
                 f"{x['max_prob_diff_vs_fp32']:.2e} | {r['dma_read_bytes']:,.0f} | {r['bytes_per_read_dma']:.1f} | "
                 f"{r['pulled_bytes']:,.0f} | {r['dpu_side_modeled_ms']:.2f} ms |")
    L.append("")
    by = {r["dtype"]: r for r in big}
    if {"fp32", "int32", "int8"} <= set(by) and {"fp32", "int8"} <= set(acc_by):
        share = by["int8"]["dma_read_bytes"] / by["fp32"]["dma_read_bytes"]
        d_auc = acc_by["int8"]["auc_pim"] - acc_by["fp32"]["auc_pim"]
        same = abs(by["int8"]["dpu_side_modeled_ms"] - by["int32"]["dpu_side_modeled_ms"]) < 1e-6
        L.append(f"int8 reads {share:.0%} of fp32's DMA bytes (request staging included; the rows alone: a quarter) "
                 f"and moves AUC by {d_auc:+.4f}; its modeled DPU time "
                 + ("equals int32's: the kernel is issue-bound and the pull of int32 partial sums does not shrink, "
                    "so its gain is MRAM capacity ([capacity_int8.md](capacity_int8.md))." if same else
                    f"is {by['int8']['dpu_side_modeled_ms']:.2f} ms against int32's {by['int32']['dpu_side_modeled_ms']:.2f} ms."))
    L += ["", "## Accuracy by scale granularity", ""]
    L.append(f"Teacher (the best possible model) AUC {res['teacher']['auc']:.4f}, log loss {res['teacher']['log_loss']:.4f}; "
             f"{res['test_samples']:,} held-out samples, click rate {res['click_rate']:.3f}. *cpu ref*: a CPU DLRM whose "
             "tables are the dequantized integers; *pim*: the same integers summed in int32 on emulated DPUs. "
             "Last row: the fp32 tables quantized row-wise to int8 by FBGEMM's rule (per-row min/max, as TorchRec's "
             "INT8 tables; our implementation), that row-wise table's own lookup as the cpu ref, and the same table "
             "requantized to our int8 group-wise format on the DPUs (so its last-but-one column is the error the "
             "conversion adds).")
    L.append("")
    L.append("| variant | AUC cpu ref | AUC pim | log loss cpu ref | log loss pim | max abs prob. diff vs fp32 | "
             "mean abs prob. diff vs fp32 | max abs prob. diff pim vs cpu ref | max element error |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in a:
        me = "-" if r["max_element_error"] is None else f"{r['max_element_error']:.2e}"
        L.append(f"| {r['variant']} | {r['auc_cpu_ref']:.4f} | {r['auc_pim']:.4f} | {r['log_loss_cpu_ref']:.4f} | "
                 f"{r['log_loss_pim']:.4f} | {r['max_prob_diff_vs_fp32']:.2e} | {r['mean_prob_diff_vs_fp32']:.2e} | "
                 f"{r['max_prob_diff_pim_vs_cpu_ref']:.2e} | {me} |")
    L += ["", "## DPU-side cost at both DPU counts", "",
          "MRAM tables: bytes of table shards on the fullest DPU (small here: scaled tables). Emulator wall: "
          "the kernel phase on this machine, not a DPU latency.", ""]
    L.append("| DPUs | dtype | MRAM tables | DMA reads | DMA read B | bytes / read DMA | bytes pulled | "
             "kernel, modeled | DPU side, modeled | kernel, emulator wall |")
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in c:
        L.append(f"| {r['nr_dpus']:,} | {r['dtype']} | {r['mram_table_bytes_max']:,} B | {r['dma_read_ops']:,.0f} | "
                 f"{r['dma_read_bytes']:,.0f} | {r['bytes_per_read_dma']:.1f} | {r['pulled_bytes']:,.0f} | "
                 f"{r['kernel_modeled_ms']:.2f} ms ({r['kernel_limiter'].split(' ')[0]}) | "
                 f"{r['dpu_side_modeled_ms']:.2f} ms | {r['kernel_emulator_wall_ms']:.1f} ms |")
    L += ["", "## Method", ""]
    L.append(f"- Data: {res['train_samples']:,} training and {res['test_samples']:,} held-out samples, pooling "
             f"{args['train_pooling']} id per table (as Criteo Kaggle), Zipf({args['alpha']}) ids; labels "
             f"Bernoulli(teacher probability). Student trained {args['epochs']} epoch(s), Adam, batch 1,024 "
             f"({res['train_seconds']:.0f} s).")
    L.append(f"- Scales: element limit L = min(qmax, floor((2^31-1)/{args['max_bag_lookups']})); group-wise = "
             f"{args['group_cols']} columns per scale; calibrated = the hot rows covering {args['coverage']:.1%} of the training "
             "set's accesses set the scale, colder elements are clipped (the error bound includes the clip).")
    L.append("- DMA bytes, ops and bytes pulled are the emulator's exact counts (request staging included); "
             "DPU time is modeled (updlrm/data_files/timing_constants.json: int16/int8 add costs are guessed "
             "equal to int32's); emulator wall time is this machine running the kernel, not a DPU latency.")
    L.append("- Capacity of the Criteo Terabyte / MLPerf table shapes in int8 on one 2,560-DPU system "
             "(`updlrm partition --dtype int8`) and their full-scale what-if: [capacity_int8.md](capacity_int8.md).")
    L.append("- TorchRec INT8 row-wise tables: not compared. torchrec 1.9.2 installs without another torch, but "
             "its FBGEMM operators (fbgemm-gpu-cpu 1.9.0, fbgemm-gpu-nightly-cpu 2026.10.16) fail to load against "
             "torch 2.13.0+cpu (undefined C++ symbols: built for another torch), and installing a matching torch "
             "is not allowed here.")
    L.append(f"- Machine: {m.get('cpu_model', m.get('processor'))}, {m.get('cpu_count', '?')} CPUs, load average "
             f"{res['load_average_start']} at start, {res['load_average_end']} at end; {m.get('date_utc')}.")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row-scale", type=float, default=1e-3, help="share of Kaggle's rows (default 1e-3)")
    ap.add_argument("--train-samples", type=int, default=400_000)
    ap.add_argument("--test-samples", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=1.05)
    ap.add_argument("--group-cols", type=int, default=4)
    ap.add_argument("--max-bag-lookups", type=int, default=4096)
    ap.add_argument("--coverage", type=float, default=0.99,
                    help="calibrated variant: share of the training accesses whose rows set the scales (default 0.99)")
    ap.add_argument("--acc-dpus", type=int, default=64)
    ap.add_argument("--cost-dpus", type=lambda s: [int(x) for x in s.split(",")], default=[64, 2560])
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--pooling", type=int, default=20, help="lookups per bag of the cost batches (default 20)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="dtypes", help="output prefix: PREFIX.json, PREFIX.md")
    ap.add_argument("--md-only", action="store_true", help="rewrite PREFIX.md from an existing PREFIX.json")
    args = ap.parse_args(argv)
    if args.md_only:
        with open(args.out + ".json") as f:
            md = _md(json.load(f))
        with open(args.out + ".md", "w") as f:
            f.write(md)
        print(md)
        return 0
    torch.set_num_threads(args.threads)
    load0 = [round(x, 2) for x in os.getloadavg()]
    cfg = configs.get("kaggle", row_scale=args.row_scale)
    _progress(f"drawing {args.train_samples:,} + {args.test_samples:,} samples labelled by the teacher")
    data = TeacherClicks(cfg, pooling=1, alpha=args.alpha, seed=0)
    train, test = data.sample(args.train_samples, seed=1), data.sample(args.test_samples, seed=2)
    t0 = time.perf_counter()
    last = [0.0]

    def prog(step, steps, loss):
        if time.perf_counter() - last[0] > 5 or step == steps:
            last[0] = time.perf_counter()
            _progress(f"training step {step}/{steps}, loss {loss:.4f}")

    model = train_dlrm(cfg, train, epochs=args.epochs, progress=prog)
    train_s = time.perf_counter() - t0
    res = {
        "args": {**vars(args), "train_pooling": 1},
        "machine": machine_info(),
        "load_average_start": load0,
        "train_samples": train.n, "test_samples": test.n, "click_rate": float(test.labels.mean()),
        "train_seconds": train_s,
        "teacher": {"auc": auc_score(test.labels, test.teacher_probs), "log_loss": log_loss(test.labels, test.teacher_probs)},
    }
    res["accuracy"] = accuracy(model, cfg, train, test, args)
    res["cost"] = cost(model, cfg, args)
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    with open(args.out + ".json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    md = _md(res)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
