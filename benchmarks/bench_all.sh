#!/usr/bin/env bash
# Re-run the timing-model check, the scaled-table `updlrm bench` configs and the full-scale what-if
# into benchmarks/results/bench/ (about 5 minutes on 2 cores; ~3 GB RAM).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=benchmarks/results/bench
mkdir -p "$OUT"
{ echo "start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"; } > "$OUT/run_info.txt"
$PY benchmarks/bench_timing_validation.py --json "$OUT/timing_validation.json" | tee "$OUT/timing_validation.txt"
for c in kaggle_small_tables kaggle_mid_tables kaggle_mid_fp32 dpu_count_sweep; do
  mkdir -p "$OUT/$c"
  $PY -m updlrm.cli bench --config-file "benchmarks/bench_configs/$c.json" --quiet --out "$OUT/$c" | tee "$OUT/$c/table.txt"
done
$PY benchmarks/bench_fullscale_model.py --json "$OUT/fullscale_kaggle.json" | tee "$OUT/fullscale_kaggle.txt"
$PY benchmarks/bench_summarize.py "$OUT"/*/bench.json | tee "$OUT/summary.md"
echo "end   $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)" >> "$OUT/run_info.txt"
