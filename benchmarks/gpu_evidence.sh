#!/usr/bin/env bash
# Issue 13 part 3: the BUSI evidence suite on one CUDA GPU, within about 8 minutes, and its results page.
#
# Prepare HERE first (a machine with PyPI): bash benchmarks/gpu_prepare.sh   -> .gpu/wheels, .gpu/busi
# Then on the GPU machine (the device tool, carry [".gpu"]):  bash benchmarks/gpu_evidence.sh [OUT]
#
# What runs: benchmarks/busi-gpu.toml, 50 runs (5 folds x 2 fractions x 5 rows) at the medium preset,
# JOBS processes sharing the one GPU (local executor), the LDM fitted once per fold. Sizing (computed;
# no CUDA run has been timed yet): one MGCC step at 128², dim_mult 2, batch 8 is ~0.9 TFLOP, a few ms of
# H100/H200 compute but ~1000 kernel launches, so ~15-25 ms per step in one process; supervised, mean
# teacher and CCT cost ~0.35, 0.6 and 0.8 of that. 10 cells x 3.75 MGCC-step equivalents x T=1500 is
# ~56k MGCC steps; with 8 processes overlapping launches (~200+ steps/s together) that is ~4-5 min,
# plus ~1 min of LDM fits that run beside other runs. TRAIN_S caps the training phase: runs still going
# then are stopped (they resume later with the same command) and the page is made from the finished
# runs, which are complete results on their own. Every run's progress goes to OUT/runs.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-busi-gpu}}
train_s=${TRAIN_S:-390}
jobs=${JOBS:-8}
data=${BUSI:-.gpu/busi}
page=${PAGE:-docs/results/busi-gpu}
started=$(date +%s)

python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu_evidence: no CUDA device here; run this on a GPU machine (see the header of $0)" >&2; exit 2; }
[ -d "$data" ] || { echo "gpu_evidence: no dataset at $data; run benchmarks/gpu_prepare.sh first" >&2; exit 2; }
if ! python3 -c "import harness, segmentation_models_pytorch, diffusers" 2>/dev/null; then
  [ -d .gpu/wheels ] || { echo "gpu_evidence: packages missing and no .gpu/wheels; run benchmarks/gpu_prepare.sh" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-build-isolation .gpu/wheels/*.whl -e . || exit 2
fi
mkdir -p "$out"
export SEGBENCH_CACHE="$out/cache" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
suite=(bench run --suite benchmarks/busi-gpu.toml --data "$data" --out "$out/runs" --device cuda --jobs "$jobs")
echo "== $(date -u +%T) training: ${suite[*]} (stopped after ${train_s} s)"
timeout --signal=INT --kill-after=30 "$train_s" "${suite[@]}" 2>&1 | tee "$out/runs.log" | grep --line-buffered -E "done:|failed|error|==|local executor"
echo "== $(date -u +%T) after $(( $(date +%s) - started )) s:"
bench status "$out/runs" 2>&1 | tail -8
echo "== $(date -u +%T) results page -> $page"
bench report "$out/runs" --format markdown --out "$page" --device cuda --images 4 \
  --title "segbench on BUSI, GPU suite" --command "bash benchmarks/gpu_evidence.sh" --command "${suite[*]}" 2>&1 | tail -2
bench table "$out/runs" --compare supervised --format markdown 2>&1 | head -20
echo "== done in $(( $(date +%s) - started )) s on $(cat "$out/gpu.txt")"
