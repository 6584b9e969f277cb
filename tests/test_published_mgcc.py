"""segbench's mgcc + cmunet computes what the published MGCC code computes (float64, whole step).

The published network and loss are rebuilt layer by layer in benchmarks/published_mgcc.py (the
speed benchmark's comparison point). With the same weights and the same perturbation draws, the
logits of all four decoders, the loss, every parameter gradient and the batch-norm running
statistics agree to float64 round-off, in both memory layouts. Any speed-up of the segbench layers
must keep this test green.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from harness.api import resolve_params
from harness.testing import make_batch, make_context
from plugins.backbones.cmunet import CMUNet, CMUNetParams
from plugins.ssl_methods.mgcc import MGCC

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "published_mgcc.py"
_spec = importlib.util.spec_from_file_location("published_mgcc", _PATH)
published = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(published)

LENGTHS, KERNEL = (1, 2, 1), 5


def _pair(order: str = "release") -> tuple[MGCC, published.PublishedMGCC]:
    torch.manual_seed(0)
    params = CMUNetParams(dim_mult=1, lengths=LENGTHS, kernel=KERNEL)
    method = MGCC(lambda: CMUNet(1, 1, params), resolve_params(MGCC, None, {"order": order}, "mgcc")).double()
    with torch.no_grad():  # non-trivial biases and batch-norm affine parameters, so that every mapping matters
        for p in method.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    ref = published.PublishedMGCC(img_ch=1, length=LENGTHS, k=KERNEL, dim_mult=1).double()
    published.load_segbench_weights(ref, method)
    return method, ref


def _as_published(method: MGCC, ref: published.PublishedMGCC, what: str) -> dict[str, torch.Tensor]:
    """``method``'s gradients (``what='grad'``) or buffers, under the published parameter names."""
    shadow = copy.deepcopy(method)
    if what == "grad":
        for p, original in zip(shadow.parameters(), method.parameters(), strict=True):
            p.data = original.grad.clone()
    out = copy.deepcopy(ref)
    published.load_segbench_weights(out, shadow)
    return dict(out.named_parameters()) if what == "grad" else dict(out.named_buffers())


@pytest.mark.parametrize("channels_last", [False, True])
def test_mgcc_step_equals_the_published_step_in_float64(channels_last: bool) -> None:
    method, ref = _pair()
    batch = make_batch(n_labeled=2, n_unlabeled=2, size=32, seed=1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batch.labeled_images = batch.labeled_images.double().contiguous(memory_format=fmt)
    batch.unlabeled_images = batch.unlabeled_images.double().contiguous(memory_format=fmt)
    batch.labeled_masks = batch.labeled_masks.double()
    method.to(memory_format=fmt)
    ref.to(memory_format=fmt)  # dropout masks are drawn in memory order: same layout, same draws

    ctx = make_context(400, 500, seed=2)
    ref_gen = torch.Generator().manual_seed(0)
    ctx.generator.manual_seed(0)  # the same draws, in the same order, on both sides
    ref.perturbations = [lambda x, p=p: p(x, ref_gen) for p in method.perturbations]

    out = method.train_step(batch, ctx)
    x = torch.cat([batch.labeled_images, batch.unlabeled_images]).contiguous(memory_format=fmt)
    ref_out = ref(x)
    ref_loss = published.published_loss(ref_out, batch.labeled_masks, 2, ctx.ramp(method.params.consistency))
    # segbench computes its losses in fp32 on purpose (bf16 logits): the loss and the gradients it
    # sends back are fp32-exact, the network itself float64-exact (the no-grad check below)
    torch.testing.assert_close(out.loss.double(), ref_loss, rtol=1e-6, atol=1e-7)
    out.loss.backward()
    ref_loss.backward()

    with torch.no_grad():
        ctx.generator.manual_seed(0)
        ref_gen.manual_seed(0)
        ours = method.decoder_outputs(torch.cat([batch.labeled_images, batch.unlabeled_images]), ctx.generator)
        theirs = ref(x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)

    grads = _as_published(method, ref, "grad")
    for name, p in ref.named_parameters():
        # (biases of convolutions followed by batch norm have a zero gradient up to round-off)
        atol = 1e-5 * float(p.grad.abs().max()) + 1e-12
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
    buffers = _as_published(method, ref, "buffers")
    for name, b in ref.named_buffers():
        torch.testing.assert_close(buffers[name], b, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_the_weight_mapping_covers_every_published_tensor() -> None:
    method, ref = _pair()
    assert sum(p.numel() for p in method.parameters()) == sum(p.numel() for p in ref.parameters())
    fresh = published.PublishedMGCC(img_ch=1, length=LENGTHS, k=KERNEL, dim_mult=1).double()
    published.load_segbench_weights(fresh, method)
    for (name, a), b in zip(ref.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")
    # every tensor is overwritten: a freshly initialised network differs from the loaded one
    other = published.PublishedMGCC(img_ch=1, length=LENGTHS, k=KERNEL, dim_mult=1).double()
    differing = [n for n, t in other.state_dict().items() if not torch.equal(t, ref.state_dict()[n])]
    untouched = {n for n, _ in other.named_parameters()} - set(differing)
    assert not untouched, f"parameters the mapping leaves at their initial value: {sorted(untouched)}"
