"""The demo images (`data_prep.demo.render_image`) in the ImageNet and AVA layouts.

Both reuse the CUB demo's rendering: near-pixel-scale texture (period 2.0-2.15 px, which a 2x bilinear
downscale averages away) under coarse nuisance (background, colour, position, shading, pixel noise).

- **ImageNet layout** (``OUT/ILSVRC2012``): the class is the texture, as in the CUB demo.
  ``train/<wnid>/<wnid>_<n>.JPEG``, a flat ``val/ILSVRC2012_val_<NNNNNNNN>.JPEG`` and ``LOC_val_solution.csv``
  (``ImageId,PredictionString`` = ``<wnid> <xmin> <ymin> <xmax> <ymax>``, the object's box). The wnids are
  ``n00000001``, ``n00000002``, ... (not WordNet ids): their sorted order is the texture order.
- **AVA layout** (``OUT/AVA_dataset``): ``AVA.txt`` (15 columns: index, image id, votes for scores 1..10, two tag
  ids, challenge id) and ``images/<image id>.jpg``. The score lives in the detail: a latent quality q ~ U(0, 1)
  sets the texture's RMS contrast (0.02 + 0.13 q of full scale) and the vote distribution's centre
  (3 + 4 q, plus rater noise with sd 0.25), so the mean score is readable from pixel-scale energy and mostly
  lost after a 2x bilinear downscale. Nuisance: the texture kind (all but the broadband noise, whose 2x2
  average keeps energy), the spread of the votes (sd 1.0-1.6), the number of voters (100-250), tags and
  challenge. Image ids are distinct random integers, like AVA's.

Each generator writes ``demo.json`` last and returns at once on a second call with the same parameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.demo import TEXTURES, RenderJob, check_classes, check_size, is_cached, mark_done, render_all

NUM_SCORES = 10
AVA_TEXTURES = [i for i, (name, _) in enumerate(TEXTURES) if name != "Highpass_Noise"]


def imagenet_wnids(num_classes: int) -> list[str]:
    """The demo's wnids in class order (sorted order = class index, as in ImageNet)."""
    return [f"n{i + 1:08d}" for i in range(num_classes)]


def generate_imagenet_demo(
    out_dir: str | Path,
    num_classes: int = 10,
    num_images: int = 600,
    seed: int = 0,
    image_size: tuple[int, int] = (500, 375),
    workers: int | None = None,
) -> Path:
    """Writes the texture demo in the ImageNet ILSVRC2012 layout (or returns the cached one).

    Args:
        out_dir: parent folder; the dataset goes to ``out_dir/ILSVRC2012``.
        num_classes: texture classes, 2 to 12.
        num_images: total images, evenly over the classes, about half train and half val.
        seed: seed of everything random.
        image_size: (width, height) of every image.
        workers: processes drawing images; None uses every core.

    Returns:
        The ``ILSVRC2012`` folder, ready for `data_prep.imagenet.shard_imagenet`.
    """
    check_classes(num_classes, num_images, image_size)
    width, height = image_size
    root = Path(out_dir).resolve() / "ILSVRC2012"
    params = {"layout": "imagenet", "num_classes": num_classes, "num_images": num_images, "seed": seed,
              "image_size": [width, height]}
    if is_cached(root, params):
        return root

    wnids = imagenet_wnids(num_classes)
    labels = [i * num_classes // num_images for i in range(num_images)]
    is_val = np.zeros(num_images, bool)
    split_rng = np.random.default_rng([seed, 1])
    for label in range(num_classes):
        ids = [i for i, lab in enumerate(labels) if lab == label]
        is_val[split_rng.permutation(ids)[: len(ids) // 2]] = True
    # val images are numbered in a shuffled order, so the flat folder mixes classes like the real one
    val_order = [int(i) for i in split_rng.permutation(np.flatnonzero(is_val))]
    val_number = {image: n for n, image in enumerate(val_order, start=1)}
    paths = []
    for i, label in enumerate(labels):
        if is_val[i]:
            paths.append(f"val/ILSVRC2012_val_{val_number[i]:08d}.JPEG")
        else:
            paths.append(f"train/{wnids[label]}/{wnids[label]}_{i + 1}.JPEG")
    for wnid in wnids:
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
    (root / "val").mkdir(parents=True, exist_ok=True)

    jobs: list[RenderJob] = [(i + 1, labels[i], str(root / paths[i]), width, height, seed, None) for i in range(num_images)]
    boxes = render_all(jobs, workers)
    rows = ["ImageId,PredictionString"]
    for i in val_order:
        x, y, w, h = boxes[i]
        rows.append(f"{Path(paths[i]).stem},{wnids[labels[i]]} {round(x)} {round(y)} {round(x + w)} {round(y + h)}")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    mark_done(root, params)
    return root


def vote_counts(quality: float, rng: np.random.Generator) -> list[int]:
    """AVA-like votes for scores 1..10 whose centre rises with `quality` in [0, 1]."""
    centre = 3.0 + 4.0 * quality + rng.normal(0.0, 0.25)
    spread = rng.uniform(1.0, 1.6)
    scores = np.arange(1, NUM_SCORES + 1)
    probabilities = np.exp(-0.5 * ((scores - centre) / spread) ** 2)
    return [int(v) for v in rng.multinomial(int(rng.integers(100, 251)), probabilities / probabilities.sum())]


def generate_ava_demo(
    out_dir: str | Path,
    num_images: int = 600,
    seed: int = 0,
    image_size: tuple[int, int] = (500, 375),
    workers: int | None = None,
) -> Path:
    """Writes the quality demo in the AVA layout (or returns the cached one).

    Args:
        out_dir: parent folder; the dataset goes to ``out_dir/AVA_dataset``.
        num_images: images listed in AVA.txt (the split is drawn by `data_prep.ava.shard_ava`).
        seed: seed of everything random.
        image_size: (width, height) of every image.
        workers: processes drawing images; None uses every core.

    Returns:
        The ``AVA_dataset`` folder, ready for `data_prep.ava.shard_ava`.
    """
    check_size(num_images, 4, image_size)
    width, height = image_size
    root = Path(out_dir).resolve() / "AVA_dataset"
    params = {"layout": "ava", "num_images": num_images, "seed": seed, "image_size": [width, height]}
    if is_cached(root, params):
        return root

    rng = np.random.default_rng([seed, 2])
    image_ids = [int(i) for i in rng.choice(np.arange(1, 1_000_000), size=num_images, replace=False)]
    quality = rng.uniform(0.0, 1.0, size=num_images)
    textures = rng.choice(AVA_TEXTURES, size=num_images)
    lines, jobs = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for index, (image_id, q, texture) in enumerate(zip(image_ids, quality, textures), start=1):
        votes = vote_counts(float(q), rng)
        tags = [int(t) if rng.random() < 0.7 else 0 for t in rng.integers(1, 67, size=2)]
        challenge = int(rng.integers(1, 1400))
        lines.append(" ".join(str(v) for v in [index, image_id, *votes, *tags, challenge]))
        path = str(root / "images" / f"{image_id}.jpg")
        jobs.append((image_id, int(texture), path, width, height, seed, 0.02 + 0.13 * float(q)))
    render_all(jobs, workers)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    mark_done(root, params)
    return root
