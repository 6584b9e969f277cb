"""Layers shared by the built-in backbones: U-Net stages, ConvMixer, MSAG gates and decoders.

The structure, parameter counts and function are those of the published MGCC network
(``src/network/MGCC.py``). Where the published arrangement hit slow CPU paths under bf16 autocast
and channels_last, a layer computes the same function another way (each is tested against the
published form):

- :class:`MSAG` normalises its three branches with one ``BatchNorm2d(3c)`` on their concatenation
  instead of three ``BatchNorm2d(c)`` (batch norm is per channel: same outputs, 6c parameters and
  gradients), and its output ``x + x * g`` is one ``addcmul``;
- the decoder's [skip, up] concatenation + conv is :class:`ConcatConv2d` (one conv per part, summed);
- the ConvMixer depthwise conv (:class:`DepthwiseConv2d`) has its own CPU weight gradient.

Why: a concatenation's backward hands each producer a channel slice of the gradient, which under
channels_last is neither contiguous nor channels_last; the CPU batch-norm and ReLU backward then
take strided paths 5-40x slower than on dense tensors, and PyTorch's CPU depthwise weight gradient
was 10-50x slower than a grouped convolution. Together these dominated a bf16 training step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Features


def conv3x3(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Conv2d:
    """A 3x3 convolution with bias that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=True)


class DoubleConv(nn.Sequential):
    """[3x3 conv (bias) -> BN -> ReLU] x 2: the published ``conv_block``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            conv3x3(in_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpConv(nn.Sequential):
    """Nearest x2 up-sampling -> 3x3 conv (bias) -> BN -> ReLU: the published ``up_conv``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv3x3(in_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _DepthwiseConvFunction(torch.autograd.Function):
    """Stride-1 "same" depthwise convolution with a fast CPU backward.

    PyTorch's CPU depthwise weight gradient takes a slow generic path: at the CMU-Net bottleneck it
    was 10-50x slower than this formulation and the largest single item of a bf16 training step.
    Here dW[c] = sum_n corr(x[n, c], g[n, c]) is computed as a convolution with one group per
    (sample, channel) pair whose kernel is the output gradient, which oneDNN runs fast. That needs
    x and g as (1, N*C, H, W), i.e. one NCHW packing of each inside the backward pass (bottleneck
    sized); the forward pass and every tensor it hands on keep the caller's memory format.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # the adjoint of a stride-1 same convolution: correlate with the flipped kernel
            grad_x = F.conv2d(grad, weight.flip(2, 3), padding=weight.shape[-1] - 1 - ctx.padding, groups=c)
        if ctx.needs_input_grad[1]:
            xs = x.reshape(1, n * c, h, w)
            gs = grad.reshape(n * c, 1, h, w)
            per_sample = F.conv2d(xs, gs.to(xs.dtype), padding=ctx.padding, groups=n * c)
            acc = torch.promote_types(per_sample.dtype, torch.float32)  # sum bf16 partials in fp32
            grad_w = per_sample.view(n, c, *weight.shape[-2:]).sum(0, dtype=acc).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3), dtype=torch.promote_types(grad.dtype, torch.float32)).to(weight.dtype)
        return grad_x, grad_w, grad_b, None


class DepthwiseConv2d(nn.Conv2d):
    """A k x k depthwise convolution (stride 1, "same" padding, bias) with a fast CPU backward.

    Same parameters, state dict and outputs as ``nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)``.
    """

    def __init__(self, dim: int, kernel: int) -> None:
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"ConvMixer kernel must be a positive odd number, got {kernel}")
        super().__init__(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=True)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_grad_enabled():
            return super()._conv_forward(x, weight, bias)
        if torch.is_autocast_enabled("cpu"):
            # what autocast does to a convolution: every operand in the autocast dtype
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return _DepthwiseConvFunction.apply(x, weight, bias, self.kernel_size[0] // 2)


class ConvMixerLayer(nn.Module):
    """x <- x + BN(GELU(depthwise kxk conv(x))); x <- BN(GELU(1x1 conv(x))). Both convs have a bias."""

    def __init__(self, dim: int, kernel: int = 7) -> None:
        super().__init__()
        self.depthwise = DepthwiseConv2d(dim, kernel)
        self.norm1 = nn.BatchNorm2d(dim)
        self.pointwise = nn.Conv2d(dim, dim, 1, bias=True)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(F.gelu(self.depthwise(x)))
        return self.norm2(F.gelu(self.pointwise(x)))


class ConvMixerBlock(nn.Sequential):
    """``depth`` ConvMixer layers of width ``dim``: the published ``ConvMixerBlock``."""

    def __init__(self, dim: int, depth: int, kernel: int = 7) -> None:
        if depth < 1:
            raise ValueError(f"a ConvMixer block needs depth >= 1, got {depth}")
        super().__init__(*[ConvMixerLayer(dim, kernel) for _ in range(depth)])


class MSAG(nn.Module):
    """Multi-scale attention gate: x + x * sigmoid(BN(1x1(ReLU(BN([1x1(x), 3x3(x), 3x3 dil 2(x)]))))).

    See the module docstring for why the three branch batch norms are one ``BatchNorm2d(3c)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=True)
        self.ordinary = conv3x3(channels, channels)
        self.dilated = conv3x3(channels, channels, dilation=2)
        self.branch_norm = nn.BatchNorm2d(3 * channels)
        self.vote = nn.Conv2d(3 * channels, channels, 1, bias=True)
        self.vote_norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat((self.pointwise(x), self.ordinary(x), self.dilated(x)), dim=1)
        gate = torch.sigmoid(self.vote_norm(self.vote(F.relu(self.branch_norm(branches), inplace=True))))
        return torch.addcmul(x, x, gate.to(x.dtype))


class ConcatConv2d(nn.Conv2d):
    """``conv(cat(parts, dim=1))`` computed as the sum of one convolution per part, without the cat.

    Same parameters and outputs as an ``nn.Conv2d`` over the concatenated input. Why: the backward
    pass of a concatenation hands each producer a channel slice of the gradient; for channels_last
    tensors that slice is neither contiguous nor channels_last, and the ReLU backward of the
    up-convolution then took a strided path 30x slower than on a dense gradient.
    """

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sizes = [p.shape[1] for p in parts]
        if sum(sizes) != self.in_channels:
            raise ValueError(f"ConcatConv2d expects {self.in_channels} input channels in total, got {sizes}")
        out = None
        start = 0
        for part, size in zip(parts, sizes, strict=True):
            weight = self.weight[:, start : start + size]
            y = self._conv_forward(part, weight, self.bias if out is None else None)
            out = y if out is None else out.add_(y)
            start += size
        return out


class DecoderStage(nn.Module):
    """One up step: up-conv the deeper map, then a double conv over [skip, up] (the published order).

    The first conv of the double conv reads the skip and the up-sampled map as separate inputs
    (:class:`ConcatConv2d`); parameters and outputs are those of the published concat + conv_block.
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.up = UpConv(in_channels, out_channels)
        self.fuse = ConcatConv2d(skip_channels + out_channels, out_channels, 3, padding=1, bias=True)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.norm2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.fuse(skip, self.up(x))), inplace=True)
        return F.relu(self.norm2(self.conv2(h)), inplace=True)


class UNetEncoder(nn.Module):
    """Double-conv stages with 2x2 max-pooling between them; returns every stage's output."""

    def __init__(
        self, in_channels: int, widths: Sequence[int], stage: Callable[[int, int, int], nn.Module] | None = None
    ) -> None:
        """``stage(level, in_channels, out_channels)`` builds each stage (default :class:`DoubleConv`)."""
        super().__init__()
        chans = [in_channels, *widths]
        make = stage or (lambda _level, cin, cout: DoubleConv(cin, cout))
        self.stages = nn.ModuleList(make(i, chans[i], chans[i + 1]) for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> Features:
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(F.max_pool2d(x, 2) if i else x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """The U-Net / CMU-Net decoder: optional MSAG gates on the skips, up stages, 1x1 head.

    ``widths`` are the encoder widths, shallow to deep; the decoder reads one feature per width.
    """

    def __init__(self, widths: Sequence[int], out_channels: int, gates: bool) -> None:
        super().__init__()
        widths = list(widths)
        self.gates = nn.ModuleList(MSAG(w) for w in widths[:-1]) if gates else None
        self.stages = nn.ModuleList(DecoderStage(widths[i + 1], widths[i], widths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[0], out_channels, 1, bias=True)

    def forward(self, features: Features) -> torch.Tensor:
        skips = list(features[:-1])
        if self.gates is not None:
            skips = [gate(s) for gate, s in zip(self.gates, skips, strict=True)]
        x = features[-1]
        for stage, skip in zip(reversed(self.stages), reversed(skips), strict=True):
            x = stage(x, skip)
        return self.head(x)


def context_blocks(dim: int, lengths: Sequence[int], kernel: int) -> nn.ModuleList:
    """One :class:`ConvMixerBlock` per entry of ``lengths`` (the backbone's ``context``)."""
    return nn.ModuleList(ConvMixerBlock(dim, depth, kernel) for depth in lengths)
