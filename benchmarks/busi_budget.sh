#!/usr/bin/env bash
# Issue 13 part 1: where does the comparison mean something? Test Dice against the budget T for
# supervised and MGCC on fold 0 at 1/8 labels, at the CPU suite's settings (benchmarks/busi-cpu.toml: 64²,
# cmunet dim_mult 1, bf16, one thread per run), then the page with the dice_vs_iterations figure and every
# run's command.
#   bash benchmarks/busi_budget.sh [OUT] [BUDGETS...]     e.g. bash benchmarks/busi_budget.sh runs/budget 250 500 1000 2000
# On the 2-vCPU VM: about 25 min for 250..2000 (MGCC ~0.5 s/step, supervised ~0.09 s/step, two at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/busi-budget}
shift || true
budgets=("${@:-250 500 1000 2000}")
for T in ${budgets[*]}; do
  echo "== T=$T $(date -u +%T)"
  bench run --data ../shared/data/busi --ssl supervised,mgcc --labeled 1/8 --fold 0 --preset medium \
    --image-size 64 --set cmunet.dim_mult=1 --precision bf16 --iterations "$T" --out "$out" --jobs 2
done
bench report "$out" --format markdown --out docs/results/busi-budget --title "segbench on BUSI: test Dice against the budget" \
  --command "bash benchmarks/busi_budget.sh $out ${budgets[*]}"
