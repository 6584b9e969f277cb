#!/usr/bin/env bash
# Issue 13 part 2: the CPU evidence page from nothing: the suite (benchmarks/busi-cpu.toml), the memorisation
# and fidelity report of each fold's LDM (bench generate reuses the suite's fit: same settings, same cache
# key, so nothing is fitted twice), then docs/results/busi-cpu/ written by `bench report`.
#   bash benchmarks/busi_cpu.sh [OUT]        (OUT defaults to runs/busi-cpu; about two hours on 2 vCPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
suite=benchmarks/busi-cpu.toml
out=${1:-runs/busi-cpu}
bench run --suite "$suite" --jobs 2 --out "$out"
# data, folds, image size, preset and the LDM rows' ldm.* settings, read from the suite file
mapfile -t generate < <(python3 - "$suite" <<'PY'
import shlex, sys, tomllib
suite = tomllib.load(open(sys.argv[1], "rb"))
d = suite["defaults"]
ldm = [s for g in suite["grid"] if "ldm" in g.get("generator", []) for s in g.get("set", []) if s.startswith("ldm.")]
for fold in d["folds"]:
    args = ["--data", d["data"], "--fold", str(fold), "--preset", d["preset"], "--image-size", str(d["image_size"])]
    print(shlex.join(args + [a for s in ldm for a in ("--set", s)]))
PY
)
for args in "${generate[@]}"; do
  fold=$(sed -E 's/.*--fold ([0-9]+).*/\1/' <<<"$args")
  eval bench generate "$args" --cache-dir "$out/generators" --out "$out/generate/fold$fold"
done
bench report "$out" --format markdown --out docs/results/busi-cpu \
  --title "segbench on BUSI: the CPU suite (3 folds, 1/8 and 1/4 labels, 64², T = 1000)" \
  --command "bash benchmarks/busi_cpu.sh $out"
