"""Speed of the ldm generator on this machine: one autoencoder step, one denoiser step, sampling per image.

    python benchmarks/bench_generator.py                      # quick and paper presets, fp32 and bf16
    python benchmarks/bench_generator.py --presets quick --dtypes fp32 --threads 1

Every timing runs the generator's own code paths (training loops and DDIM sampler) on random data.
Sampling time per image is extrapolated from two short DDIM runs (k1 and k2 steps, decode included)
to the preset's number of steps. Results go to benchmarks/results/generator-<host>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch

from harness.api import resolve_params
from harness.config.presets import PRESETS as RUN_PRESETS
from plugins.generators.ldm import LatentDiffusionGenerator, networks, training
from plugins.generators.ldm.sampling import ddim_sample

TINY = {"ae_channels": (8, 16, 16), "ae_norm_groups": 8, "latent_channels": 4, "unet_channels": (16, 32),
        "unet_norm_groups": 8, "ae_batch": 2, "unet_batch": 2, "sample_batch": 2}  # fmt: skip


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(preset: str, dtype: str, device: torch.device, repeats: int, tiny: bool) -> dict:
    params = resolve_params(LatentDiffusionGenerator, preset, TINY if tiny else {}, "ldm")
    size = RUN_PRESETS[preset]["image_size"]
    latent = networks.latent_size(params, size)
    autocast = _autocast(device, dtype)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ae = networks.build_autoencoder(params).to(device)
    unet = networks.build_denoiser(params).to(device)
    images = torch.rand(max(params.ae_batch, 4), 1, size, size, device=device) * 2 - 1

    one_ae = dataclasses.replace(params, ae_steps=1)
    ae_step = _median_seconds(lambda: training.train_autoencoder(ae, images, one_ae, gen, autocast), repeats)

    shape = (max(params.unet_batch, 4), params.latent_channels, latent, latent)
    posteriors = training.Posteriors(torch.randn(shape, device=device), torch.full(shape, 0.01, device=device))
    one_unet = dataclasses.replace(params, unet_steps=1, hflip=False)
    scheduler = networks.training_scheduler(params)
    unet_step = _median_seconds(
        lambda: training.train_denoiser(unet, None, scheduler, posteriors, None, 0, 0.0, 1.0, one_unet, gen, autocast),
        repeats,
    )

    # big images on a CPU: a small batch keeps the measurement short; per-image cost hardly depends on it
    batch = params.sample_batch if device.type == "cuda" or size <= 128 else min(params.sample_batch, 4)
    ae.eval()
    unet.eval()

    def sampling(steps: int) -> float:
        p = dataclasses.replace(params, sample_steps=steps, sample_batch=batch)
        return _median_seconds(
            lambda: ddim_sample(ae, unet, p, n=batch, seed=0, latent_size=latent, shift=0.0, scale=1.0,
                                class_probs=None, device=device, autocast=autocast),
            max(1, repeats // 2),
        )  # fmt: skip

    k1, k2 = 2, 6
    t1, t2 = sampling(k1), sampling(k2)
    per_step = max(0.0, (t2 - t1) / (k2 - k1))
    latents = torch.randn(batch, params.latent_channels, latent, latent, device=device)

    def decode() -> None:
        with torch.no_grad(), autocast():
            ae.decode(latents)

    decode_s = _median_seconds(decode, max(1, repeats // 2))
    per_image = (per_step * params.sample_steps + decode_s) / batch
    return {
        "preset": preset,
        "dtype": dtype,
        "tiny": tiny,
        "image_size": size,
        "latent_shape": [params.latent_channels, latent, latent],
        "autoencoder_parameters": networks.count_parameters(ae),
        "denoiser_parameters": networks.count_parameters(unet),
        "autoencoder_step_s": round(ae_step, 4),
        "autoencoder_batch": params.ae_batch,
        "denoiser_step_s": round(unet_step, 4),
        "denoiser_batch": params.unet_batch,
        "sample_steps": params.sample_steps,
        "sampling_batch": batch,
        "ddim_step_s_per_batch": round(per_step, 4),
        "decode_s_per_batch": round(decode_s, 4),
        "sampling_s_per_image": round(per_image, 4),
        "fit_estimate_s": round(ae_step * params.ae_steps + unet_step * params.unet_steps, 1),
    }


def bench_reference(device: torch.device, repeats: int) -> dict:
    """The issue's yardstick: UNet2DModel (32, 64, 64) on 8x32x32 latents, one batch-8 training step."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(in_channels=8, out_channels=8, block_out_channels=(32, 64, 64), norm_num_groups=32,
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3).to(device)  # fmt: skip
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    z = torch.randn(8, 8, 32, 32, device=device)
    t = torch.randint(0, 1000, (8,), device=device)

    def step() -> None:
        loss = (unet(z, t).sample - z).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return {"unet_32_64_64_latent_8x32x32_batch8_step_s": round(_median_seconds(step, repeats), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="quick,paper")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="tiny widths: checks the script, numbers mean nothing")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    results = []
    for preset in args.presets.split(","):
        for dtype in args.dtypes.split(","):
            row = bench_preset(preset.strip(), dtype.strip(), device, args.repeats, args.tiny)
            print(json.dumps(row))
            results.append(row)
    record = {
        "host": socket.gethostname(),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "2 shared cores: other processes make multi-threaded timings swing by 10x; compare load averages",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reference": {} if args.tiny else bench_reference(device, args.repeats),
        "results": results,
    }
    name = f"generator-{socket.gethostname()}{'-tiny' if args.tiny else ''}.json"
    out = args.out or Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
