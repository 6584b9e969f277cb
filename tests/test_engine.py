"""The training engine: schedules, checkpoints, exact resume, non-finite losses, batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.api import SegDataset, SSLMethod, StepOutput
from harness.data.normalize import fit_normaliser
from harness.training.engine import NonFiniteLossError, TrainData, Trainer, TrainSettings
from harness.training.schedules import consistency_weight, poly_lr
from plugins.backbones.unet import UNet, UNetParams
from plugins.ssl_methods.mgcc import MGCC
from plugins.ssl_methods.supervised import Supervised


def _blobs(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs on noisy background: a task a tiny U-Net learns in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        cy, cx, r = rng.integers(8, size - 8), rng.integers(8, size - 8), rng.integers(4, 8)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = np.clip(60 + 120 * mask + rng.normal(0, 20, (size, size)), 0, 255)
        images.append(image.astype(np.uint8))
        masks.append(mask)
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(masks))[:, None]


def _dataset(n: int = 12, size: int = 32) -> SegDataset:
    images, masks = _blobs(n, size)
    ids = [f"img{i}" for i in range(n)]
    return SegDataset(
        name="blobs",
        ids=ids,
        images=images,
        masks=masks,
        strata=["benign"] * n,
        cases=ids,
        native_masks=[m[0].numpy() for m in masks],
        boxes=[(0, 0, size, size)] * n,
        unlabeled=images[:0],
        unlabeled_ids=[],
        content_hashes={i: i for i in ids},
        fingerprint="blobs",
    )


def _trainer(tmp_path, method_cls=Supervised, iterations: int = 12, **settings) -> Trainer:
    torch.manual_seed(0)
    ds = _dataset()
    params = UNetParams(width=4, context_lengths=(1, 1, 1))
    method = method_cls(lambda: UNet(1, 1, params), method_cls.Params())
    defaults = dict(iterations=iterations, val_every=4, checkpoint_every=4, log_every=2, seed=3)
    data = TrainData(
        labeled_images=ds.images[:6],
        labeled_masks=ds.masks[:6],
        unlabeled_images=ds.images[6:10],
        val_dataset=ds,
        val_indices=[10, 11],
    )
    normaliser = fit_normaliser("zscore", 1, ds.images)
    return Trainer(
        method, TrainSettings(**{**defaults, **settings}), data, normaliser, torch.device("cpu"), tmp_path,
        show_progress=False,
    )  # fmt: skip


def test_poly_lr_reaches_zero_at_T_and_never_goes_past():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 100, 100) == 0.0
    assert poly_lr(0.01, 150, 100) == 0.0  # the published loop would produce a complex number here
    values = [poly_lr(0.01, t, 100) for t in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_published_ramp_values():
    assert consistency_weight(7, 0, 20000, "published") == pytest.approx(0.047, abs=5e-4)
    assert consistency_weight(7, 15000, 20000, "published") == pytest.approx(2.01, abs=5e-3)
    assert consistency_weight(7, 19999, 20000, "published") == pytest.approx(3.99, abs=5e-3)
    assert consistency_weight(7, 30000, 20000, "published") == pytest.approx(7.0)
    assert consistency_weight(7, 300, 300, "scaled") == pytest.approx(7.0)


def test_training_writes_checkpoints_and_curves(tmp_path):
    trainer = _trainer(tmp_path)
    result = trainer.train()
    assert result.steps == 12 and result.final_lr == pytest.approx(poly_lr(0.01, 11, 12))
    for name in ("best.pt", "last.pt", "latest.pt"):
        assert (tmp_path / "checkpoints" / name).exists()
    rows = [line for line in (tmp_path / "curves.jsonl").read_text().splitlines() if line]
    assert len([r for r in rows if '"event": "val"' in r]) == 3
    assert len([r for r in rows if '"event"' not in r]) == 12
    assert math.isfinite(result.best_score)


def test_supervised_loss_decreases(tmp_path):
    trainer = _trainer(tmp_path, iterations=40, val_every=40, lr=0.05)
    trainer.train()
    import json

    losses = [json.loads(r)["loss"] for r in (tmp_path / "curves.jsonl").read_text().splitlines() if '"lr"' in r]
    assert np.mean(losses[-8:]) < np.mean(losses[:8])


def test_resume_is_exact(tmp_path):
    """A run stopped after a checkpoint and restarted ends with the same weights as an uninterrupted one."""
    full = _trainer(tmp_path / "full", MGCC, iterations=12, val_every=6)
    full.train()
    part = _trainer(tmp_path / "part", MGCC, iterations=12, val_every=6)

    def crash(ctx):
        if ctx.step == 9:
            raise KeyboardInterrupt

    part.method.after_step = crash  # dies after step 9; its last checkpoint is at step 7
    with pytest.raises(KeyboardInterrupt):
        part.train()
    resumed = _trainer(tmp_path / "part", MGCC, iterations=12, val_every=6)
    resumed.train()
    assert resumed.resumed_from == 8
    a, b = full.method.state_dict(), resumed.method.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _Exploding(SSLMethod):
    """A method whose loss turns NaN at step 5."""

    uses_unlabeled = False

    def __init__(self, build_backbone, params) -> None:
        super().__init__(build_backbone, params)
        self.net = build_backbone()

    def train_step(self, batch, ctx) -> StepOutput:
        logits = self.net(batch.labeled_images)
        loss = ctx.supervised_loss(logits, batch.labeled_masks)
        if ctx.step >= 5:
            loss = loss * float("nan")
        return StepOutput(loss, {"sup": loss.detach()})

    def inference_network(self):
        return self.net


def test_non_finite_loss_stops_with_step_and_terms(tmp_path):
    trainer = _trainer(tmp_path, _Exploding, iterations=12)
    with pytest.raises(NonFiniteLossError, match=r"step 5 .*sup=nan"):
        trainer.train()
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 3  # the last good checkpoint (checkpoint_every 4) is kept


def test_batches_are_a_pure_function_of_the_step(tmp_path):
    a = _trainer(tmp_path / "a")
    b = _trainer(tmp_path / "b")
    idx_a = [a.lab_stream.take(s, 4) for s in range(5)]
    idx_b = [b.lab_stream.take(s, 4) for s in (4, 2, 0, 3, 1)]
    assert torch.equal(idx_a[4], idx_b[0]) and torch.equal(idx_a[0], idx_b[2])
    # every labeled image is used once per pass
    assert sorted(torch.cat([a.lab_stream.take(s, 3) for s in range(2)]).tolist()) == list(range(6))


def test_method_needing_unlabeled_data_refuses_an_empty_pool(tmp_path):
    from harness.errors import UserError

    ds = _dataset()
    params = UNetParams(width=4, context_lengths=(1, 1, 1))
    method = MGCC(lambda: UNet(1, 1, params), MGCC.Params())
    data = TrainData(ds.images[:6], ds.masks[:6], ds.images[:0], ds, [10])
    with pytest.raises(UserError, match="unlabeled"):
        Trainer(method, TrainSettings(iterations=2), data, fit_normaliser("zscore", 1, ds.images),
                torch.device("cpu"), tmp_path, show_progress=False)  # fmt: skip


def test_fp16_trains_with_a_gradient_scaler_whose_state_is_checkpointed(tmp_path):
    """The fp16 path (CUDA GPUs without bf16) scales the loss; it runs on the CPU too, which is what is tested."""
    trainer = _trainer(tmp_path, iterations=8, val_every=8, checkpoint_every=4, precision="fp16")
    assert trainer.scaler is not None and trainer.scaler.is_enabled()
    trainer.train()
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert state["grad_scaler"]["scale"] > 0
    assert all(torch.isfinite(p).all() for p in trainer.method.parameters())
    assert _trainer(tmp_path / "b", iterations=2, precision="bf16").scaler is None
    assert _trainer(tmp_path / "c", iterations=2, precision="fp32").scaler is None
