"""The learned resizer of Talebi & Milanfar (ICCV 2021), MULLER (Tu, Milanfar & Talebi, ICCV 2023) and the
fixed resizers they are compared with.

Architecture (n filters, r residual blocks), as in docs/method.md#architecture:

    x ───────────────────────────────── resize to (Hout, Wout) ──────────────────────┐ image skip
    x → conv7x7(3→n) → LReLU → conv1x1(n→n) → LReLU → BN → resize to (Hout, Wout) = f
    f → r × ResBlock[conv3x3 → BN → LReLU → conv3x3 → BN, + identity]
      → conv3x3 → BN → (+ f) → conv7x7(n→3) → (+ image skip) → output (B, 3, Hout, Wout)

The residual blocks are chained: block k is fed block k-1's output (widely copied code feeds every
block the bottleneck `f`, which silently turns r blocks into one wide block).

MULLER (docs/method.md#muller): L layers of two trainable scalars (w_l, b_l), zero at the start, so an
untrained MULLER is its base resize exactly; each layer boosts one band of a Laplacian pyramid taken at
the input resolution:

    out = base(x);  for l in 1..L:  b = blur(x);  out += tanh(w_l * base(b - x) + b_l);  x = b

Every resizer kind is one entry of `RESIZERS`: whether it learns, how it is built from config, how
reports name and colour it, and which config fields a search varies for it. Nothing else in the
project decides these by comparing kind names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from pipeline.config import ResizerConfig


def resize(
    x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = False
) -> torch.Tensor:
    """Resamples a (B, C, H, W) batch to `size` with half-pixel centres.

    Args:
        x: input batch.
        size: output (height, width); any size and aspect ratio, down or up.
        mode: "bilinear", "bicubic", "nearest" (half-pixel "nearest-exact") or "area".
        antialias: low-pass before downscaling (bilinear and bicubic only).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.adaptive_avg_pool2d(x, size)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


class ResBlock(nn.Module):
    """conv3x3 → BN → LReLU → conv3x3 → BN, plus identity; no activation after the add.

    The activation works in place (see `LearnedResizer`)."""

    def __init__(self, channels: int, negative_slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class LearnedResizer(nn.Module):
    """The paper's resizer network.

    Args:
        output_size: (height, width) of the output.
        num_filters: n, feature channels.
        num_res_blocks: r, chained residual blocks.
        negative_slope: LeakyReLU slope.
        interpolation: resampling of the bottleneck and of the image skip.
        antialias: antialias that resampling (the paper does not).
        zero_init_last: zero the last conv, so the output starts as the plain resize, bit for bit.

    The LeakyReLUs work in place: a convolution's backward needs its input, not its output, so the
    activation may overwrite the convolution's output and keep one tensor for backward where an
    out-of-place one keeps two. At the recipe's 768 → 384 that is 71 instead of 111 MiB of saved
    activations per image in bf16, the same values (docs/results.md#activation-memory).
    """

    def __init__(
        self,
        output_size: tuple[int, int],
        *,
        num_filters: int = 16,
        num_res_blocks: int = 1,
        negative_slope: float = 0.2,
        interpolation: str = "bilinear",
        antialias: bool = False,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.interpolation = interpolation
        self.antialias = antialias
        n = num_filters
        self.head = nn.Sequential(
            nn.Conv2d(3, n, 7, padding=3),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Conv2d(n, n, 1),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.BatchNorm2d(n),
        )
        self.res_blocks = nn.Sequential(*[ResBlock(n, negative_slope) for _ in range(num_res_blocks)])
        self.tail = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.BatchNorm2d(n))
        self.out_conv = nn.Conv2d(n, 3, 7, padding=3)
        if zero_init_last:
            nn.init.zeros_(self.out_conv.weight)
            nn.init.zeros_(self.out_conv.bias)

    @classmethod
    def from_config(cls, cfg: ResizerConfig, output_size: tuple[int, int]) -> LearnedResizer:
        return cls(
            output_size,
            num_filters=cfg.num_filters,
            num_res_blocks=cfg.num_res_blocks,
            negative_slope=cfg.negative_slope,
            interpolation=cfg.interpolation,
            antialias=cfg.antialias,
            zero_init_last=cfg.zero_init_last,
        )

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, self.output_size, self.interpolation, self.antialias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hin, Win) normalized pixels -> (B, 3, Hout, Wout)."""
        image_skip = self._resize(x)  # (B, 3, Hout, Wout)
        f = self._resize(self.head(x))  # (B, n, Hout, Wout)
        y = self.tail(self.res_blocks(f)) + f  # blocks chained: each sees the previous output
        return self.out_conv(y) + image_skip


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """The normalized 1-D Gaussian of `size` taps (centred) and standard deviation `sigma`."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (kernel / kernel.sum()).float()


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (before, after) of one axis: output ceil(size / stride), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class MullerResizer(nn.Module):
    """MULLER, the multilayer Laplacian resizer (Tu, Milanfar & Talebi, ICCV 2023, arXiv 2304.02859).

    Matches the published TensorFlow layer (google-research `muller/models/muller.py`) to float32 rounding,
    checked against its outputs in tests/pipeline/test_muller.py.

    Args:
        output_size: (height, width) of the output; any size and aspect ratio, down or up.
        num_layers: L, each with a trainable weight and bias (2L parameters), both zero at the start.
        kernel_size: taps of the separable Gaussian blur (zero padding, same size out).
        sigma: its standard deviation.
        avg_pool: when downscaling by at least 2 on both axes, average-pool with stride = input // output
            (TensorFlow "SAME" padding, padded pixels not counted) before the base resize.
        antialias: antialias the base bilinear resize.
    """

    def __init__(
        self,
        output_size: tuple[int, int],
        *,
        num_layers: int = 2,
        kernel_size: int = 5,
        sigma: float = 1.0,
        avg_pool: bool = False,
        antialias: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.avg_pool = avg_pool
        self.antialias = antialias
        self.weight = nn.Parameter(torch.zeros(num_layers))
        self.bias = nn.Parameter(torch.zeros(num_layers))
        self.register_buffer("kernel", gaussian_kernel(kernel_size, sigma), persistent=False)
        self.padding = ((kernel_size - 1) // 2, kernel_size // 2)  # TensorFlow "SAME" at stride 1

    @classmethod
    def from_config(cls, cfg: ResizerConfig, output_size: tuple[int, int]) -> MullerResizer:
        return cls(
            output_size,
            num_layers=cfg.muller_layers,
            kernel_size=cfg.muller_kernel_size,
            sigma=cfg.muller_sigma,
            avg_pool=cfg.muller_avg_pool,
            antialias=cfg.muller_antialias,
        )

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed resize every band goes through: optional average pooling, then bilinear."""
        (height, width), (out_h, out_w) = x.shape[-2:], self.output_size
        stride_h, stride_w = height // out_h, width // out_w
        if self.avg_pool and stride_h > 1 and stride_w > 1:
            top, bottom = same_padding(height, stride_h, stride_h)
            left, right = same_padding(width, stride_w, stride_w)
            if top or bottom or left or right:  # average over the real pixels of each window only
                ones = torch.ones_like(x[:1, :1])
                pad = (left, right, top, bottom)
                x = F.avg_pool2d(F.pad(x, pad), (stride_h, stride_w)) / F.avg_pool2d(F.pad(ones, pad), (stride_h, stride_w))
            else:
                x = F.avg_pool2d(x, (stride_h, stride_w))
        return F.interpolate(x, size=self.output_size, mode="bilinear", align_corners=False, antialias=self.antialias)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel separable Gaussian blur, horizontal then vertical, zero padding, same size out."""
        channels, taps = x.shape[1], self.kernel.numel()
        kernel = self.kernel.to(x.dtype)
        before, after = self.padding
        x = F.conv2d(F.pad(x, (before, after, 0, 0)), kernel.view(1, 1, 1, taps).expand(channels, 1, 1, taps), groups=channels)
        return F.conv2d(F.pad(x, (0, 0, before, after)), kernel.view(1, 1, taps, 1).expand(channels, 1, taps, 1), groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, Hin, Win) normalized pixels -> (B, C, Hout, Wout)."""
        out = self.base(x)
        for weight, bias in zip(self.weight.to(x.dtype), self.bias.to(x.dtype)):
            blurred = self.blur(x)
            out = out + torch.tanh(weight * self.base(blurred - x) + bias)
            x = blurred
        return out

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, num_layers={self.weight.numel()}, taps={self.kernel.numel()}"


class FixedResizer(nn.Module):
    """A parameter-free resizer with the learned resizer's interface: the baseline arm.

    Args:
        output_size: (height, width) of the output.
        kind: "bilinear", "bicubic", "area", "nearest", "bilinear_aa" or "bicubic_aa".
    """

    def __init__(self, output_size: tuple[int, int], kind: str = "bilinear") -> None:
        super().__init__()
        if kind not in FIXED_KINDS:
            raise ValueError(f"resizer.kind={kind!r} is not a fixed resizer; choose one of {list(FIXED_KINDS)}")
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.kind = kind
        self.mode = kind.removesuffix("_aa")
        self.antialias = kind.endswith("_aa")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hin, Win) -> (B, 3, Hout, Wout)."""
        return resize(x, self.output_size, self.mode, self.antialias)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, kind={self.kind!r}"


# ---------------------------------------------------------------- the registry of resizer kinds

@dataclass(frozen=True)
class ResizerKind:
    """One resizer kind, as every part of the project asks about it.

    Attributes:
        name: the value of `resizer.kind`.
        learned: has trainable parameters (trained jointly with the backbone).
        build: (resizer config, output (height, width)) -> the module.
        color: its colour in plots (learned kinds warm, fixed ones cool).
        searched: the dotted config fields a hyperparameter search varies for this kind.
        describe: config values (dotted names) -> a short label, e.g. "n16 r1".
    """

    name: str
    learned: bool
    build: Callable[[Any, tuple[int, int]], nn.Module]
    color: str
    searched: tuple[str, ...] = ()
    describe: Callable[[dict[str, Any]], str] | None = None

    def label(self, values: dict[str, Any]) -> str:
        """A short label of a run of this kind with these config values (dotted names)."""
        return self.describe(values) if self.describe else self.name


def _fixed(name: str, color: str) -> ResizerKind:
    return ResizerKind(name, learned=False, build=lambda cfg, size: FixedResizer(size, name), color=color)


RESIZERS: dict[str, ResizerKind] = {
    kind.name: kind
    for kind in (
        ResizerKind(
            "learned",
            learned=True,
            build=lambda cfg, size: LearnedResizer.from_config(cfg, size),
            color="C3",
            searched=("resizer.num_filters", "resizer.num_res_blocks", "resizer.zero_init_last", "resizer.interpolation"),
            describe=lambda v: f"n{v.get('resizer.num_filters')} r{v.get('resizer.num_res_blocks')}",
        ),
        ResizerKind(
            "muller",
            learned=True,
            build=lambda cfg, size: MullerResizer.from_config(cfg, size),
            color="C6",
            searched=("resizer.muller_layers",),
            describe=lambda v: f"L{v.get('resizer.muller_layers')}",
        ),
        _fixed("bilinear", "C0"),
        _fixed("bicubic", "C1"),
        _fixed("area", "C2"),
        _fixed("nearest", "C4"),
        _fixed("bilinear_aa", "C5"),
        _fixed("bicubic_aa", "C9"),
    )
}
RESIZER_KINDS: tuple[str, ...] = tuple(RESIZERS)
LEARNED_KINDS: tuple[str, ...] = tuple(k for k, v in RESIZERS.items() if v.learned)
FIXED_KINDS: tuple[str, ...] = tuple(k for k, v in RESIZERS.items() if not v.learned)


def resizer_kind(name: str) -> ResizerKind:
    """The registry entry of `resizer.kind=name`.

    Raises:
        ValueError: no such kind; lists the known ones.
    """
    if name not in RESIZERS:
        raise ValueError(f"resizer.kind={name!r} is not allowed; choose one of {list(RESIZERS)}")
    return RESIZERS[name]


def build_resizer(cfg: ResizerConfig, output_size: tuple[int, int]) -> nn.Module:
    """The resizer of `cfg.kind`, producing `output_size` (height, width)."""
    return resizer_kind(cfg.kind).build(cfg, output_size)


def count_parameters(module: nn.Module, *, conv_weights_only: bool = False) -> int:
    """Parameter count; `conv_weights_only` counts what the paper reports (e.g. 11,872 for n=16, r=1)."""
    if conv_weights_only:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))
    return sum(p.numel() for p in module.parameters())
