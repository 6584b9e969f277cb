"""The main command on a machine where another process keeps a core busy, against the idle one-thread time.

    python benchmarks/bench_threads.py                        # the README's command, quick preset, 2 rounds
    python benchmarks/bench_threads.py --rounds 3 --args "--iterations 100 --set ldm.ae_steps=100 \\
        --set ldm.unet_steps=150"                             # a shorter version of it

Configurations, launched alternately in the same loop (round 1: idle, busy, ...; round 2: ...),
each as a fresh ``bench run --generator ldm --ssl mgcc --preset quick`` with an empty results
folder and cache, so that a change of the machine's load hits every configuration alike:

- ``idle-1-thread``: ``--threads 1``, nothing else started by this script (the reference);
- ``busy-policy``: one busy-looping process started by this script, segbench's thread policy decides;
- ``busy-2-threads`` (``--with-oversubscribed``): the same with ``--threads 2``, torch's old default;
- ``idle-policy`` (``--with-idle-policy``): nothing else started, the policy decides: the README's
  command as a user runs it on an idle machine.

The goal (issue 15): busy-policy within 1.3x of idle-1-thread. Reported per round and as the median
of the per-round ratios, with the machine's load average around every launch (other users' work
counts: this script cannot make the machine idle). Results go to benchmarks/results/threads-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.training.device import cpu_model

MAIN = ["run", "--generator", "ldm", "--ssl", "mgcc", "--preset", "quick"]
SPIN = "while True: pass"


def launch(name: str, extra: list[str], busy: bool, bench: str, nice: int) -> dict:
    """One fresh run of the main command; returns its wall time and what the run recorded."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-threads-{name}-"))
    env = {**os.environ, "SEGBENCH_CACHE": str(work / "cache")}
    for variable in ("OMP_NUM_THREADS", "SEGBENCH_THREADS"):  # the policy, not the environment, decides
        env.pop(variable, None)
    spinner = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", SPIN]) if busy else None
    try:
        if spinner is not None:
            time.sleep(2.0)  # let the spinner show up in the scheduler before segbench looks at the load
        load_before = os.getloadavg()
        cmd = ["nice", "-n", str(nice), bench, *MAIN, "--out", str(work / "runs"), "--quiet", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        load_after = os.getloadavg()
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: bench run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    record = json.loads(next((work / "runs").glob("*/run.json")).read_text())
    generator = record.get("generator", {})
    shutil.rmtree(work, ignore_errors=True)
    return {
        "config": name,
        "seconds": round(seconds, 1),
        "threads": record.get("threads"),
        "thread_policy": record.get("thread_policy"),
        "ldm_fit_seconds": (generator.get("fit") or {}).get("fit_seconds"),
        "ldm_sample_seconds": generator.get("sample_seconds"),
        "train_seconds": round(record["train"]["seconds"], 1),
        "test_dice_best": record["test"]["best"]["dice"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }


def _commit() -> str | None:
    """The segbench commit measured (None outside a git checkout)."""
    try:
        here = Path(__file__).parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    except OSError:
        return None
    return out.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--args", default="", help="more bench run arguments (a shorter run), as one string")
    parser.add_argument("--with-oversubscribed", action="store_true", help="also run --threads 2 beside the spinner")
    parser.add_argument("--with-idle-policy", action="store_true", help="also run without --threads and spinner")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the measured runs and of the spinner")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    bench = shutil.which("bench") or str(Path(sys.executable).with_name("bench"))
    extra = shlex.split(args.args)
    configs = [("idle-1-thread", ["--threads", "1"], False), ("busy-policy", [], True)]
    if args.with_oversubscribed:
        configs.append(("busy-2-threads", ["--threads", "2"], True))
    if args.with_idle_policy:
        configs.append(("idle-policy", [], False))
    started = time.time()
    results = []
    for round_index in range(args.rounds):
        for name, config_args, busy in configs:
            result = {"round": round_index, **launch(name, [*config_args, *extra], busy, bench, args.nice)}
            results.append(result)
            print(json.dumps(result), flush=True)
    ratios = {}
    for name, *_ in configs[1:]:
        per_round = [
            next(r for r in results if r["round"] == k and r["config"] == name)["seconds"]
            / next(r for r in results if r["round"] == k and r["config"] == "idle-1-thread")["seconds"]
            for k in range(args.rounds)
        ]
        ratios[name] = {"per_round": [round(x, 3) for x in per_round], "median": round(statistics.median(per_round), 3)}
    out = args.out or Path(__file__).parent / "results" / f"threads-{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "code": _commit(),
        "command": "bench " + " ".join(MAIN) + (" " + args.args if args.args else ""),
        "goal": "busy-policy / idle-1-thread <= 1.3",
        "ratios_to_idle_1_thread": ratios,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "note": args.note,
        "results": results,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"ratios_to_idle_1_thread": ratios, "out": str(out)}))


if __name__ == "__main__":
    main()
