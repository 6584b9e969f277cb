"""What a run without a terminal writes about its progress: training lines, and where a resumed run starts."""

from __future__ import annotations

import pytest
import torch

from harness.data.normalize import fit_normaliser
from harness.progress import Reporter
from harness.training.engine import TrainData, Trainer, TrainSettings
from plugins.backbones.unet import UNet, UNetParams
from plugins.ssl_methods.mgcc import MGCC
from tests.test_engine import _dataset


def _trainer(run_dir, lines: list[str]) -> Trainer:
    torch.manual_seed(0)
    ds = _dataset()
    params = UNetParams(width=4, context_lengths=(1, 1, 1))
    method = MGCC(lambda: UNet(1, 1, params), MGCC.Params())
    data = TrainData(ds.images[:6], ds.masks[:6], ds.images[6:10], ds, [10, 11])
    settings = TrainSettings(iterations=8, val_every=4, checkpoint_every=4, log_every=2, seed=3)
    # interval 0: a plain line at every update, as if every step took longer than the interval
    reporter = Reporter(record=lines.append, interval=0.0, timer=False)
    return Trainer(
        method, settings, data, fit_normaliser("zscore", 1, ds.images), torch.device("cpu"), run_dir, progress=reporter
    )


def test_plain_log_of_a_tiny_run_and_of_its_resumption(tmp_path):
    lines: list[str] = []
    trainer = _trainer(tmp_path, lines)

    def crash(ctx):
        if ctx.step == 5:
            raise KeyboardInterrupt

    trainer.method.after_step = crash  # dies after step 5; its last checkpoint is at step 3
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    steps = [line for line in lines if line.startswith("train ") and " it (" in line]
    assert steps and steps[0].startswith("train 1/8 it (12%)")
    assert any("ETA" in line and "loss=" in line and "consistency=" in line and "lr=" in line for line in steps)
    assert lines[-1].startswith("train stopped at 5/8 it")  # the interrupted task still closes its line

    lines.clear()
    _trainer(tmp_path, lines).train()
    assert lines[0].startswith("resuming from step 4 of 8 (") and lines[0].endswith("latest.pt)")
    assert lines[1].startswith("train 5/8 it (62%)")
    assert lines[-1].startswith("train done: 8/8 it")
