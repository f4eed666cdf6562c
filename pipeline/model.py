"""Resizer + timm backbone.

The model takes uint8 pixels as they come off the data path, normalizes them on its own device with
the backbone's mean/std, resizes (learned or fixed) to the backbone's input size and classifies.
The resizer therefore sees normalized pixels, as in the reference recipe.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.config import ModelConfig, OptimConfig, ResizerConfig
from pipeline.resizer import build_resizer


class ResizerModel(nn.Module):
    """Normalize → resizer → backbone.

    Args:
        resizer: module mapping (B, 3, Hin, Win) to (B, 3, S, S).
        backbone: a timm model taking (B, 3, S, S).
        mean: per-channel mean of the backbone, in [0, 1] units.
        std: per-channel std of the backbone, in [0, 1] units.
        input_size: the backbone's input side S.
        channels_last: run in channels-last memory format.
        output_affine: (shift, scale) applied in float32 to the head's output (regression: the training
            targets' mean and std, so outputs are in the target's units); None leaves logits as they are.

    `set_grad_checkpointing()` recomputes the normalization and a learned resizer in backward
    (the backbone has its own, timm's).
    """

    def __init__(
        self,
        resizer: nn.Module,
        backbone: nn.Module,
        *,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        input_size: int,
        channels_last: bool = False,
        output_affine: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.resizer = resizer
        self.backbone = backbone
        self.input_size = input_size
        self.channels_last = channels_last
        # Plain floats, not buffers: a bf16 cast of the module must not round a mean of 1e5 to 3 digits.
        self.output_affine = None if output_affine is None else (float(output_affine[0]), float(output_affine[1]))
        # Stored in 0-255 units so normalizing uint8 pixels is one fused multiply-add.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute resizer and backbone activations in backward instead of keeping them.

        The resizer works at the input resolution: at 768 → 384 in bf16 it held 71 of the 170 MiB an image
        costs with only Swin-L checkpointed; with both, 99 MiB, as with a bilinear resize
        (docs/results.md#activation-memory). The price is a second forward of the resizer.
        """
        self.grad_checkpointing = enable
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)
        elif enable:
            raise ValueError(f"model.grad_checkpointing: backbone {type(self.backbone).__name__} has no set_grad_checkpointing")

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) → normalized float in the model's parameter dtype."""
        x = (pixels.float() - self.mean.float()) / self.std.float()
        x = x.to(next(self.backbone.parameters()).dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def resize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) → the resizer's normalized output (B, 3, S, S)."""
        if self.grad_checkpointing and torch.is_grad_enabled() and _trainable(self.resizer):
            if torch.compiler.is_compiling():  # the compiled graph recomputes values only, never buffer updates
                return checkpoint(self._normalize_and_resize, pixels, use_reentrant=False)
            return checkpoint(self._normalize_and_resize, pixels, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(), _batch_norm_stats_kept(self.resizer)))
        return self._normalize_and_resize(pixels)

    def _normalize_and_resize(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.resizer(self.normalize(pixels))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (B, 3, H, W) → float pixels in [0, 255] (for looking at resizer outputs)."""
        return (x.float() * self.std.float() + self.mean.float()).clamp(0, 255)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, Hin, Win) → logits (B, num_outputs); regression: values in the target's units."""
        out = self.backbone(self.resize(pixels))
        if self.output_affine is None:
            return out
        shift, scale = self.output_affine
        return out.float() * scale + shift


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


@contextlib.contextmanager
def _batch_norm_stats_kept(module: nn.Module) -> Iterator[None]:
    """Batch norms normalize with the batch's statistics as before but leave their running statistics
    alone: a checkpointed forward is run twice, and its recomputation must not count the batch again."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def create_backbone(cfg: ModelConfig, num_outputs: int) -> nn.Module:
    """`timm.create_model` with pretrained weights from the hub or a local file.

    Raises:
        FileNotFoundError: `checkpoint_path` does not exist.
        RuntimeError: pretrained weights were asked for and could not be loaded.
    """
    kwargs: dict[str, Any] = dict(cfg.backbone_kwargs)
    kwargs["num_classes"] = num_outputs
    if cfg.drop_path_rate is not None:  # 0.0 too: timm's Swin defaults to 0.1
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.img_size is not None:
        kwargs["img_size"] = cfg.img_size
    pretrained = cfg.pretrained or cfg.checkpoint_path is not None or cfg.weights_url is not None
    overlay = {"url": cfg.weights_url, "hf_hub_id": None} if cfg.weights_url else None
    if cfg.checkpoint_path is not None:
        if not os.path.isfile(cfg.checkpoint_path):
            raise FileNotFoundError(
                f"model.checkpoint_path={cfg.checkpoint_path!r} does not exist; give a timm/torch "
                f"state-dict file for {cfg.backbone!r} or set model.checkpoint_path=none"
            )
        # timm's own loader handles a head of another size and position tables of another size.
        overlay = {"file": os.path.abspath(cfg.checkpoint_path)}
    def create() -> nn.Module:
        try:
            return timm.create_model(cfg.backbone, pretrained=pretrained, pretrained_cfg_overlay=overlay, **kwargs)
        except TypeError as err:
            if "img_size" not in kwargs or "img_size" not in str(err):
                raise
            # Convolutional backbones take any input size and have no img_size argument.
            kwargs.pop("img_size")
            return timm.create_model(cfg.backbone, pretrained=pretrained, pretrained_cfg_overlay=overlay, **kwargs)

    try:
        if pretrained and cfg.checkpoint_path is None:
            return first_on_this_node(f"{cfg.backbone} {cfg.weights_url or 'hub'}", create)
        return create()
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"model.backbone={cfg.backbone!r} is not a timm model ({err})") from err
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for {cfg.backbone!r} ({type(err).__name__}: {err}). "
            "Give a local weights file with model.checkpoint_path=/path/to/weights.pth(.safetensors), "
            "or train from scratch with model.pretrained=false"
        ) from err
    except OSError as err:  # hub unreachable, cache missing
        raise RuntimeError(
            f"could not download pretrained weights for {cfg.backbone!r} ({type(err).__name__}: {err}). "
            "Give a local weights file with model.checkpoint_path=/path/to/weights.pth(.safetensors), "
            "or train from scratch with model.pretrained=false"
        ) from err


def first_on_this_node(key: str, create: Callable[[], nn.Module]) -> nn.Module:
    """`create()` with the weights download it makes done once per node: the first process of a node
    (Train workers, concurrent Tune trials) creates under a lock, and fills the hub cache that every
    later one on the node then reads; later ones create concurrently, without the lock.

    A marker in the node's temporary folder says which downloads are done, keyed by the weights and
    the caches' locations (`TORCH_HOME`, `HF_HOME`, `HF_HUB_CACHE`).
    """
    import hashlib
    import tempfile

    from filelock import FileLock

    caches = [os.environ.get(name, "") for name in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE")]
    digest = hashlib.sha1("\n".join([key, *caches]).encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), "learned-resizer-weights")
    os.makedirs(folder, exist_ok=True)
    done = os.path.join(folder, f"{digest}.done")
    if not os.path.exists(done):
        with FileLock(os.path.join(folder, f"{digest}.lock")):
            if not os.path.exists(done):
                model = create()
                open(done, "w").close()
                return model
    return create()


def backbone_input_size(backbone: nn.Module, cfg: ModelConfig) -> int:
    """The backbone's square input side: config first, then the backbone's own data config."""
    if cfg.img_size is not None:
        return cfg.img_size
    data_cfg = timm.data.resolve_model_data_config(backbone)
    height, width = data_cfg["input_size"][1:]
    if height != width:
        raise ValueError(f"backbone {cfg.backbone!r} wants a non-square input {height}x{width}; set model.img_size")
    return int(height)


def build_model(
    model_cfg: ModelConfig, resizer_cfg: ResizerConfig, num_outputs: int, output_affine: tuple[float, float] | None = None
) -> ResizerModel:
    """Builds resizer + backbone for `num_outputs` classes (or score bins, or one regression value).

    Args:
        model_cfg: backbone options.
        resizer_cfg: resizer options; its output size is the backbone's input size.
        num_outputs: size of the head.
        output_affine: see `ResizerModel` (`Task.output_affine()`).
    """
    backbone = create_backbone(model_cfg, num_outputs)
    data_cfg = timm.data.resolve_model_data_config(backbone)
    size = backbone_input_size(backbone, model_cfg)
    model = ResizerModel(
        build_resizer(resizer_cfg, (size, size)),
        backbone,
        mean=tuple(data_cfg["mean"]),
        std=tuple(data_cfg["std"]),
        input_size=size,
        channels_last=model_cfg.channels_last,
        output_affine=output_affine,
    )
    if model_cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    # channels_last: the input is made channels-last (`normalize`) and convolutions keep that layout; the
    # weights stay contiguous, because DeepSpeed broadcasts parameters viewed as bytes, which needs it.
    return model


def _no_weight_decay_names(model: ResizerModel) -> set[str]:
    names: set[str] = set()
    if hasattr(model.backbone, "no_weight_decay"):
        names |= {f"backbone.{n}" for n in model.backbone.no_weight_decay()}
    return names


def param_groups(model: ResizerModel, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: backbone and resizer, each split into decay / no decay.

    Norm weights, biases (every 1-d parameter) and position tables named by the backbone's
    `no_weight_decay()` get no weight decay; the resizer gets `resizer_lr` when set.
    """
    skip = _no_weight_decay_names(model)
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "resizer" if name.startswith("resizer.") else "backbone"
        no_decay = param.ndim <= 1 or name in skip or name.endswith(("pos_embed", "relative_position_bias_table"))
        key = f"{part}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            lr = cfg.resizer_lr if part == "resizer" and cfg.resizer_lr is not None else cfg.lr
            groups[key] = {"name": key, "params": [], "lr": lr, "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
