"""Time one training step of every SSL method; write images/s to JSON.

    python benchmarks/bench_methods.py [--size 128] [--dim-mult 1] [--steps 10] [--device cpu]
    python benchmarks/bench_methods.py --versus-published [--threads 2] [--profile]

Each method runs on cmunet (dim_mult 1 by default) with a 4 + 4 batch, in fp32 and in bf16
autocast, channels_last off and on, interleaved in one process so the ratios are comparable on
a busy machine. Results: benchmarks/results/methods-<host>-<device>.json.

``--versus-published`` times segbench's mgcc step against the published MGCC step rebuilt in
benchmarks/published_mgcc.py (same network, batch 4 + 4, loss, plain SGD), the published code in
fp32 and with bf16 autocast + channels_last (its best CPU setting), interleaved round by round;
the ratios are medians of per-round ratios. ``--profile`` adds each variant's top operators by
self CPU time (torch.profiler). Results: benchmarks/results/mgcc-vs-published-<host>-t<threads>.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.api import resolve_params
from harness.plugins import get_registry
from harness.training.augment import DeviceAugmenter
from harness.training.device import autocast_factory, cpu_model, describe_device
from harness.training.losses import bce_dice_loss

METHODS = ("supervised", "mean-teacher", "ua-mt", "cct", "mgcc", "cps")


def engine_step(method, batch, ctx, optimizers) -> None:
    """One training step as the engine runs it (fp32 / bf16: no gradient scaler)."""
    out = method.train_step(batch, ctx)
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    out.loss.backward()
    for o in optimizers:
        o.step()
    method.after_step(ctx)


def _step_fn(method, device, precision: str, channels_last: bool, size: int, steps: int):
    from harness.api import Batch, StepContext

    gen = torch.Generator(device=device).manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 1, size, size, device=device).contiguous(memory_format=fmt)
    y = (torch.rand(4, 1, size, size, device=device) > 0.7).float()
    u = torch.randn(4, 1, size, size, device=device).contiguous(memory_format=fmt)
    batch = Batch(x, y, u if method.uses_unlabeled else x[:0], (u * 50 + 100) if method.uses_unlabeled else None)
    opt = [torch.optim.SGD(g, lr=1e-3, momentum=0.9) for g in method.optimizer_groups()]
    ctx = StepContext(
        step=2000, total_steps=4000, device=device, autocast=autocast_factory(device, precision),
        supervised_loss=bce_dice_loss, ramp=lambda w: w * 0.5, augment=DeviceAugmenter(gen), generator=gen,
    )  # fmt: skip

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            engine_step(method, batch, ctx, opt)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def _load_sibling(name: str):
    """A module of this folder (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _published_step(published, size: int, dim_mult: int, precision: str, channels_last: bool) -> Callable[[], None]:
    """One step of the published ``train.py`` loop on a 4 + 4 batch (autocast added around forward + loss)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = published.PublishedMGCC(img_ch=1, dim_mult=dim_mult).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(8, 1, size, size).contiguous(memory_format=fmt)
    y = (torch.rand(4, 1, size, size) > 0.7).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = model(x)
            loss = published.published_loss(outputs, y, 4, 3.5)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _segbench_step(size: int, dim_mult: int, precision: str, channels_last: bool) -> Callable[[], None]:
    """One step of segbench's engine loop for mgcc + cmunet on a 4 + 4 batch."""
    from harness.api import Batch, StepContext
    from harness.training.engine import make_optimizers

    registry = get_registry()
    backbone_cls, cls = registry.get("backbone", "cmunet"), registry.get("ssl_method", "mgcc")
    bparams = resolve_params(backbone_cls, None, {"dim_mult": str(dim_mult)}, "cmunet")
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    method = cls(lambda: backbone_cls(1, 1, bparams), resolve_params(cls, None, None, "mgcc"))
    method.to(memory_format=fmt).train()
    opt = make_optimizers(method, lr=0.01, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, size, size).contiguous(memory_format=fmt)
    y = (torch.rand(4, 1, size, size) > 0.7).float()
    batch = Batch(x[:4], y, x[4:], x[4:] * 50 + 100)
    device = torch.device("cpu")
    ctx = StepContext(
        step=2000, total_steps=4000, device=device, autocast=autocast_factory(device, precision),
        supervised_loss=bce_dice_loss, ramp=lambda w: w * 0.5, augment=DeviceAugmenter(gen), generator=gen,
    )  # fmt: skip

    return lambda: engine_step(method, batch, ctx, opt)


def _top_ops(step: Callable[[], None], rows: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls": e.count,
        }
        for e in events[:rows]
    ]


VERSUS = {
    "published fp32": ("published", "fp32", False),
    "published bf16+CL": ("published", "bf16", True),
    "segbench fp32": ("segbench", "fp32", False),
    "segbench fp32+CL": ("segbench", "fp32", True),
    "segbench bf16+CL": ("segbench", "bf16", True),
}


def versus_published(args: argparse.Namespace) -> Path:
    """Interleaved images/s of the published MGCC step and segbench's, with paired ratios."""
    published = _load_sibling("published_mgcc")
    steps = {}
    for name, (who, precision, cl) in VERSUS.items():
        if who == "published":
            steps[name] = _published_step(published, args.size, args.dim_mult, precision, cl)
        else:
            steps[name] = _segbench_step(args.size, args.dim_mult, precision, cl)
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    load_before = os.getloadavg()
    for step in steps.values():  # warm-up: oneDNN primitive caches, allocator
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = clock()
            for _ in range(args.steps):
                step()
            times[name].append((clock() - t0) / args.steps)
    load_after = os.getloadavg()
    images = 8
    rows = {}
    for name, ts in times.items():
        rows[name] = {
            "images_per_s_median": round(images / statistics.median(ts), 3),
            "images_per_s_best": round(images / min(ts), 3),
            "seconds_per_step": [round(t, 4) for t in ts],
        }
    seg = times["segbench bf16+CL"]

    def ratio(base: str) -> float:
        return round(statistics.median(b / s for b, s in zip(times[base], seg, strict=True)), 3)

    record = {
        "benchmark": "mgcc training step, segbench vs the published code (benchmarks/published_mgcc.py)",
        "size": args.size, "dim_mult": args.dim_mult, "batch": "4 labeled + 4 unlabeled", "in_channels": 1,
        "steps_per_round": args.steps, "rounds": args.rounds, "timer": args.timer,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "variants": rows,
        "segbench_bf16_cl_speedup": {
            "vs published fp32": ratio("published fp32"),
            "vs published bf16+CL": ratio("published bf16+CL"),
            "vs segbench fp32": ratio("segbench fp32"),
        },
        "ratios": "medians over rounds of (variant step time / segbench bf16+CL step time), timed interleaved",
    }  # fmt: skip
    if args.profile:
        record["profile_top_ops"] = {name: _top_ops(step, args.profile_rows) for name, step in steps.items()}
    for name, row in rows.items():
        print(f"{name:20s} {row['images_per_s_median']:7.2f} images/s (best {row['images_per_s_best']:.2f})")
    for base, r in record["segbench_bf16_cl_speedup"].items():
        print(f"segbench bf16+CL {r:.2f}x {base}")
    out = (
        args.out
        or Path(__file__).parent
        / "results"
        / f"mgcc-vs-published-{socket.gethostname()}-t{torch.get_num_threads()}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dim-mult", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--versus-published", action="store_true", help="mgcc against the published step")
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall", help="wall clock or process CPU time")
    parser.add_argument("--profile", action="store_true", help="with --versus-published: top ops per variant")
    parser.add_argument("--profile-rows", type=int, default=15)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.versus_published:
        versus_published(args)
        return
    device = torch.device(args.device)
    registry = get_registry()
    backbone_cls = registry.get("backbone", "cmunet")
    bparams = resolve_params(backbone_cls, None, {"dim_mult": str(args.dim_mult)}, "cmunet")
    results = []
    for name in args.methods.split(","):
        cls = registry.get("ssl_method", name)
        torch.manual_seed(0)
        method = cls(lambda: backbone_cls(1, 1, bparams), resolve_params(cls, "medium", None, name)).to(device)
        images_per_step = 8 if cls.uses_unlabeled else 4
        variants = {}
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                method.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                run = _step_fn(method, device, precision, cl, args.size, args.steps)
                run()  # warm-up
                variants[(precision, cl)] = run
        times = {key: [] for key in variants}
        for _ in range(args.rounds):  # interleaved, so load changes hit every variant alike
            for key, run in variants.items():
                times[key].append(run())
        for (precision, cl), ts in times.items():
            best = min(ts)
            results.append({
                "method": name, "precision": precision, "channels_last": cl,
                "images_per_s": round(images_per_step * args.steps / best, 2),
                "seconds_per_step": round(best / args.steps, 4),
            })  # fmt: skip
            print(f"{name:13s} {precision} channels_last={cl!s:5s} {results[-1]['images_per_s']:8.2f} images/s")
    out = args.out or Path(__file__).parent / "results" / f"methods-{socket.gethostname()}-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "one training step per method, cmunet, batch 4 labeled + 4 unlabeled",
        "size": args.size, "dim_mult": args.dim_mult, "steps": args.steps, "rounds": args.rounds,
        "device": str(device),
        "device_name": describe_device(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results,
    }  # fmt: skip
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
