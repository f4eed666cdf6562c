"""The learned resizer of Talebi & Milanfar (ICCV 2021) and the fixed resizers it is compared with.

Architecture (n filters, r residual blocks), as in docs/method.md#architecture:

    x ───────────────────────────────── resize to (Hout, Wout) ──────────────────────┐ image skip
    x → conv7x7(3→n) → LReLU → conv1x1(n→n) → LReLU → BN → resize to (Hout, Wout) = f
    f → r × ResBlock[conv3x3 → BN → LReLU → conv3x3 → BN, + identity]
      → conv3x3 → BN → (+ f) → conv7x7(n→3) → (+ image skip) → output (B, 3, Hout, Wout)

The residual blocks are chained: block k is fed block k-1's output (widely copied code feeds every
block the bottleneck `f`, which silently turns r blocks into one wide block).

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
    """conv3x3 → BN → LReLU → conv3x3 → BN, plus identity; no activation after the add."""

    def __init__(self, channels: int, negative_slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act = nn.LeakyReLU(negative_slope)
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
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(n, n, 1),
            nn.LeakyReLU(negative_slope),
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
