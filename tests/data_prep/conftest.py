"""Builders of tiny raw datasets in the real layouts, with the quirks real copies have."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = (24, 16)  # (width, height): tiny, so the suite stays fast


def rgb_jpeg(seed: int, size: tuple[int, int] = SIZE) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def gray_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="JPEG")
    return buffer.getvalue()


def cmyk_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg(seed: int) -> bytes:
    data = rgb_jpeg(seed)
    return data[: len(data) // 2]


# Quirky CUB image ids and what the shard must show for them.
CUB_QUIRKS = {2: "grayscale", 5: "cmyk", 7: "png", 9: "truncated", 11: "missing"}


def make_cub(root: Path, num_classes: int = 3, per_class: int = 5, quirks: bool = True) -> Path:
    """Writes a CUB_200_2011 folder; ids run class by class like the real one; returns the folder."""
    cub = root / "CUB_200_2011"
    images, labels, split, boxes = [], [], [], []
    classes = [f"{c + 1:03d}.Bird_{c + 1}" for c in range(num_classes)]
    for image_id in range(1, num_classes * per_class + 1):
        class_index = (image_id - 1) // per_class
        relative = f"{classes[class_index]}/Bird_{image_id:04d}.jpg"
        quirk = CUB_QUIRKS.get(image_id) if quirks else None
        makers = {"grayscale": gray_jpeg, "cmyk": cmyk_jpeg, "png": png_bytes, "truncated": truncated_jpeg}
        if quirk != "missing":
            path = cub / "images" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(makers.get(quirk, rgb_jpeg)(image_id))
        images.append(f"{image_id} {relative}")
        labels.append(f"{image_id} {class_index + 1}")
        split.append(f"{image_id} {image_id % 2}")
        boxes.append(f"{image_id} 1.0 2.0 10.0 8.0")
    cub.mkdir(parents=True, exist_ok=True)
    for name, lines in [
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
        ("classes.txt", [f"{i + 1} {name}" for i, name in enumerate(classes)]),
    ]:
        (cub / name).write_text("\n".join(lines) + "\n")
    return cub


def read_tar(shard: Path) -> list[tuple[str, dict[str, bytes]]]:
    """The samples of one shard in order: (key, {suffix: bytes})."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, suffix = member.name.partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][suffix] = tar.extractfile(member).read()
    return samples


def read_shards(out: Path, split: str) -> list[tuple[str, dict[str, bytes]]]:
    """All samples of a split's shards in shard order."""
    return [sample for shard in sorted(out.glob(f"{split}-*.tar")) for sample in read_tar(shard)]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every shard and the manifest of an output folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".tar", ".json")}


@pytest.fixture
def cub_src(tmp_path: Path) -> Path:
    return make_cub(tmp_path / "raw")
