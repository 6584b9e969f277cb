"""`bench run > log 2>&1` of a tiny LDM + MGCC run: progress lines during the LDM fit and training (slow tier)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TINY_LDM = [
    "--set", "ldm.ae_channels=8,16,16", "--set", "ldm.ae_norm_groups=8", "--set", "ldm.unet_channels=16,32",
    "--set", "ldm.unet_norm_groups=8", "--set", "ldm.ae_steps=30", "--set", "ldm.unet_steps=30",
    "--set", "ldm.ae_batch=8", "--set", "ldm.unet_batch=16", "--set", "ldm.sample_steps=5",
    "--set", "ldm.amp=fp32", "--n-synthetic", "8",
]  # fmt: skip
TINY_RUN = [
    "--preset", "quick", "--image-size", "32", "--backbone", "unet", "--set", "backbone.width=4",
    "--set", "backbone.context_lengths=1,1,1", "--precision", "fp32", "--iterations", "30",
    "--set", "val_every=10", "--set", "checkpoint_every=10",
]  # fmt: skip
STAMP = re.compile(r"^\d\d:\d\d:\d\d ")


def test_log_file_has_progress_lines_during_the_ldm_fit_and_training(tmp_path):
    # interval 0: a line at every update, so the test holds however fast the machine is
    env = {**os.environ, "SEGBENCH_CACHE": str(tmp_path / "cache"), "SEGBENCH_PROGRESS_INTERVAL": "0"}
    log = tmp_path / "log"
    with log.open("w") as handle:  # a file, not a terminal: plain lines
        code = subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", "--generator", "ldm", "--ssl", "mgcc", *TINY_RUN, *TINY_LDM,
             "--out", str(tmp_path / "runs"), "--threads", "1"],
            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=900,
        ).returncode  # fmt: skip
    text = log.read_text()
    assert code == 0, text[-3000:]
    lines = text.splitlines()
    progress = [line for line in lines if STAMP.match(line)]
    for stage in ("ldm autoencoder", "ldm denoiser", "train"):
        ticks = [line for line in progress if line[9:].startswith(f"{stage} ") and " ETA " in line]
        assert ticks, f"no progress line of {stage!r} in the log:\n{text[-3000:]}"
        assert any("/30 " in line and "loss=" in line for line in ticks), ticks
    assert any("ldm sampling done: 8/8 img" in line for line in progress)
    assert any(line[9:].startswith("test (best checkpoint) done") for line in progress)
    assert "torch threads: 1 (--threads 1)" in text
    # the same lines reach run.log
    run_log = next((tmp_path / "runs").glob("*/run.log")).read_text()
    assert sum(" ETA " in line for line in run_log.splitlines()) == sum(" ETA " in line for line in progress)
