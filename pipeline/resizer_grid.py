"""The figure users look at first: a few images through the fixed and the learned resizer.

    python -m pipeline.resizer_grid --data SHARDS --checkpoint RUN/checkpoint_epoch_0010 --out grid.png
    python -m pipeline.resizer_grid --images a.jpg b.jpg --set model.backbone=resnet50 --out grid.png

Columns: the resizer's input (the evaluation crop), the fixed resizer's output, the learned
resizer's output, and the learned minus the fixed output (what the network adds), amplified.
`resizer_columns_grid` draws any number of resizers side by side (`pipeline.compare` uses it).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import load_weights
from pipeline.config import JobConfig, ModelConfig, apply_overrides, from_dict
from pipeline.decode import iter_tar_samples, transform_image
from pipeline.manifest import read_manifest, shard_urls
from pipeline.model import ResizerModel, build_model
from pipeline.resizer import LEARNED_KINDS, FixedResizer, resizer_kind


def load_model(checkpoint: str | None, cfg: JobConfig, num_outputs: int = 1) -> tuple[ResizerModel, JobConfig]:
    """A model from a checkpoint's `model.pt` (its own config wins), or freshly built from `cfg`."""
    if checkpoint is None:
        return build_model(cfg.model, cfg.resizer, num_outputs).eval(), cfg
    saved = load_weights(checkpoint)
    saved_cfg = from_dict(JobConfig, saved["config"])
    # The weights come from the checkpoint: never download or read the original backbone weights.
    model_cfg = dataclasses.replace(saved_cfg.model, pretrained=False, checkpoint_path=None)
    model = build_model(model_cfg, saved_cfg.resizer, saved["num_outputs"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved_cfg


def sample_images(cfg: JobConfig, *, urls: list[str], images: list[str], count: int) -> list[np.ndarray]:
    """Evaluation crops (3, crop, crop) uint8 from image files, or from the first decodable samples of shards."""
    from PIL import Image

    rng = np.random.default_rng(0)
    crop = dict(resize_size=cfg.data.resize_size, crop_size=cfg.data.crop_size, train=False, hflip=False, rng=rng)
    if images:
        return [transform_image(Image.open(p).convert("RGB"), **crop) for p in images[:count]]
    import fsspec

    out = []
    for url in urls:
        with fsspec.open(url, "rb") as f:
            for sample in iter_tar_samples(f, url):
                if sample["error"]:
                    continue
                out.append(transform_image(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), **crop))
                if len(out) == count:
                    return out
    return out


def resizer_columns_grid(
    model: ResizerModel,
    crops: list[np.ndarray],
    columns: list[tuple[str, torch.nn.Module, str]],
    path: str | Path,
    *,
    difference_to: str | None = None,
) -> Path:
    """Writes a PNG grid: the input crops, then each resizer's output, one column per resizer.

    Args:
        model: gives the normalization the resizers work in (the backbone's mean/std).
        crops: uint8 (3, crop, crop) evaluation crops, one row each.
        columns: (title, resizer, resizer kind) triples; a resizer maps normalized (B, 3, crop, crop)
            to any size.
        path: the PNG to write.
        difference_to: the resizer kind of the reference column: each column of a learned kind gets a
            column |learned - reference| beside it, amplified.

    Returns:
        The PNG's path.
    """
    plt = _pyplot()
    pixels = torch.as_tensor(np.stack(crops))  # (B, 3, crop, crop) uint8
    with torch.no_grad():
        normalized = model.normalize(pixels).float()
        outputs = [(title, model.denormalize(resizer(normalized)), kind) for title, resizer, kind in columns]
    shown = [(f"input {pixels.shape[-1]}px", pixels.float())]
    reference = next((o for _, o, kind in outputs if difference_to and kind == difference_to), None)
    for title, images, kind in outputs:
        shown.append((title, images))
        if reference is not None and resizer_kind(kind).learned and images.shape == reference.shape:
            difference = (images - reference).abs()
            scale = 255.0 / max(float(difference.amax()), 1e-6)
            shown.append((f"|{title.split()[0]} - {difference_to}| x{scale:.1f}", difference * scale))
    fig, axes = plt.subplots(len(crops), len(shown), figsize=(3 * len(shown), 3 * len(crops)), squeeze=False)
    for row in range(len(crops)):
        for col, (title, images) in enumerate(shown):
            ax = axes[row][col]
            ax.imshow(images[row].permute(1, 2, 0).clamp(0, 255).byte().numpy(), interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def resizer_grid(
    model: ResizerModel, crops: list[np.ndarray], path: str | Path, *, kind: str = LEARNED_KINDS[0], fixed_kind: str = "bilinear"
) -> Path:
    """Writes the PNG grid of one learned model: input, fixed, learned, |learned - fixed|; returns its path.

    Args:
        kind: the model's (learned) resizer kind.
        fixed_kind: the fixed resizer shown beside it.
    """
    size = (model.input_size, model.input_size)
    columns = [
        (f"{fixed_kind} {size[0]}px", FixedResizer(size, fixed_kind), fixed_kind),
        (f"{kind} {size[0]}px", model.resizer.float(), kind),
    ]
    return resizer_columns_grid(model, crops, columns, path, difference_to=fixed_kind)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a checkpoint folder (or its model.pt); default: a freshly built model")
    parser.add_argument("--data", help="shard folder or URI to take images from")
    parser.add_argument("--split", default="test", help="split to take images from (default: test)")
    parser.add_argument("--images", nargs="*", default=[], help="image files instead of shards")
    parser.add_argument("--num-images", type=int, default=4, help="rows of the grid (default: 4)")
    parser.add_argument("--fixed", default="bilinear", help="fixed resizer to compare with (default: bilinear)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for a fresh model")
    parser.add_argument("--out", default="resizer_grid.png", help="output PNG (default: resizer_grid.png)")
    args = parser.parse_args(argv)
    if not args.images and not args.data:
        parser.error("give --data SHARDS or --images FILE [FILE ...]")
    try:
        cfg = apply_overrides(JobConfig(model=ModelConfig(pretrained=False)), args.set)
        if args.checkpoint is None and not resizer_kind(cfg.resizer.kind).learned:
            cfg = apply_overrides(cfg, [f"resizer.kind={LEARNED_KINDS[0]}"])
        model, cfg = load_model(args.checkpoint, cfg)
        if not resizer_kind(cfg.resizer.kind).learned:
            raise ValueError(f"{args.checkpoint}: this run used resizer.kind={cfg.resizer.kind!r}; there is no learned resizer to show")
        urls = [] if args.images else shard_urls(args.data, read_manifest(args.data), args.split)
        crops = sample_images(cfg, urls=urls, images=args.images, count=args.num_images)
        if not crops:
            raise ValueError(f"no decodable images found in {args.data or args.images}")
        out = resizer_grid(model, crops, args.out, kind=cfg.resizer.kind, fixed_kind=args.fixed)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
