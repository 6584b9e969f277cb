"""Time one training step of every SSL method; write images/s to JSON.

    python benchmarks/bench_methods.py [--size 128] [--dim-mult 1] [--steps 10] [--device cpu]

Each method runs on cmunet (dim_mult 1 by default) with a 4 + 4 batch, in fp32 and in bf16
autocast, channels_last off and on, interleaved in one process so the ratios are comparable on
a busy machine. Results: benchmarks/results/methods-<host>-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import time
from pathlib import Path

import torch

from harness.api import resolve_params
from harness.plugins import get_registry
from harness.training.augment import DeviceAugmenter
from harness.training.device import autocast_factory
from harness.training.losses import bce_dice_loss

METHODS = ("supervised", "mean-teacher", "ua-mt", "cct", "mgcc", "cps")


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
            out = method.train_step(batch, ctx)
            for o in opt:
                o.zero_grad(set_to_none=True)
            out.loss.backward()
            for o in opt:
                o.step()
            method.after_step(ctx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dim-mult", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
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
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results,
    }  # fmt: skip
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
