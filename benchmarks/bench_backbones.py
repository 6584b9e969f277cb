"""Training-step speed of every registered backbone: forward + backward images/s.

For each backbone (built with a preset, ``quick`` by default) and each of fp32 / bf16 autocast x
contiguous / channels_last, one step is: forward in train mode, mean of the logits as the loss,
backward, gradients cleared (no optimiser). The four settings are timed interleaved, round after
round, in one process, so that load from other processes on a shared machine hits them alike; the
result gives the median step time, images/s, and each setting's speed-up over fp32 contiguous
computed per round (median of paired ratios).

    python benchmarks/bench_backbones.py                     # all backbones, 128x128, batch 8, CPU
    python benchmarks/bench_backbones.py --backbone cmunet --repeats 9
    python benchmarks/bench_backbones.py --threads 1 --timer cpu   # on a machine shared with others

Writes benchmarks/results/backbones-<host>.json (atomically) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.api import params_dict, resolve_params
from harness.cli.commands.backbones import backbone_overrides
from harness.evaluation.complexity import count_parameters
from harness.plugins import get_registry
from harness.training.device import cpu_model

SETTINGS = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]


Step = tuple[Callable[[], None], Callable[[], None]]


def make_step(
    model: torch.nn.Module, images: torch.Tensor, dtype: str, channels_last: bool, device: torch.device
) -> Step:
    """(prepare, step): put ``model`` in the layout (untimed), then one forward + backward pass."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(device).contiguous(memory_format=fmt)

    def prepare() -> None:
        model.to(memory_format=fmt)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(x)
        logits.float().mean().backward()
        for p in model.parameters():
            p.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return prepare, step


def time_settings(
    steps: dict[tuple[str, bool], Step], warmup: int, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict:
    """Run every step ``warmup`` times, then ``repeats`` interleaved rounds; seconds per step by ``clock``."""
    for _ in range(warmup):
        for prepare, step in steps.values():
            prepare()
            step()
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, (prepare, step) in steps.items():
            prepare()
            start = clock()
            step()
            times[key].append(clock() - start)
    return times


def summarise(times: dict[tuple[str, bool], list[float]], batch: int) -> list[dict[str, Any]]:
    """Images/s per setting and paired speed-ups over fp32 contiguous."""
    base = times[("fp32", False)]
    rows = []
    for (dtype, channels_last), values in times.items():
        median = statistics.median(values)
        paired = [b / v for b, v in zip(base, values, strict=True)]
        rows.append(
            {
                "dtype": dtype,
                "autocast": dtype == "bf16",
                "channels_last": channels_last,
                "images_per_s": batch / median,
                "images_per_s_best": batch / min(values),
                "step_s_median": median,
                "step_s": values,
                "speedup_vs_fp32_contiguous": statistics.median(paired),
                "speedup_vs_fp32_contiguous_best": min(base) / min(values),
            }
        )
    return rows


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", action="append", help="benchmark only this backbone (repeatable)")
    parser.add_argument("--preset", default="quick", help="backbone preset (quick/medium/paper; '' for defaults)")
    parser.add_argument("--set", dest="sets", action="append", help="backbone.KEY=VALUE or NAME.KEY=VALUE")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=8)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="wall clock, or this process's CPU time (with --threads 1 it ignores other processes' load)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="output JSON path")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    registry = get_registry()
    names = args.backbone or registry.names("backbone")
    classes = {name: registry.get("backbone", name) for name in names}
    overrides = backbone_overrides(names, {n: getattr(c, "Params", object) for n, c in classes.items()}, args.sets)
    host = socket.gethostname()
    out = args.out or Path(__file__).resolve().parent / "results" / f"backbones-{host}.json"

    torch.manual_seed(0)
    images = torch.randn(args.batch, args.in_channels, args.image_size, args.image_size)
    results = []
    load_before = os.getloadavg()
    for name, cls in classes.items():
        params = resolve_params(cls, args.preset or None, overrides[name], f"backbone {name}")
        model = cls(args.in_channels, 1, params).to(device).train()
        steps = {(d, cl): make_step(model, images, d, cl, device) for d, cl in SETTINGS}
        clock = time.process_time if args.timer == "cpu" else time.perf_counter
        times = time_settings(steps, args.warmup, args.repeats, clock)
        rows = summarise(times, args.batch)
        results.append(
            {"backbone": name, "params": params_dict(params), "param_count": count_parameters(model), "settings": rows}
        )
        for r in rows:
            layout = "channels_last" if r["channels_last"] else "contiguous"
            print(
                f"{name:8s} {r['dtype']} {layout:13s} {r['images_per_s']:8.1f} img/s  "
                f"x{r['speedup_vs_fp32_contiguous']:.2f} vs fp32 contiguous "
                f"(best-of x{r['speedup_vs_fp32_contiguous_best']:.2f})"
            )
    report = {
        "benchmark": "backbone forward+backward",
        "host": host,
        "cpu": cpu_model(),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "batch": args.batch,
        "in_channels": args.in_channels,
        "preset": args.preset,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timer": args.timer,
        "timing": "seconds per step (wall clock or process CPU time, see timer); settings interleaved per round; "
        "speed-ups are medians of per-round ratios",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "results": results,
    }
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
