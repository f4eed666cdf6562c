"""Sharding throughput of data_prep on CUB-sized JPEGs, decode check on, 1 core vs 2 cores side by side.

Run: ``python bench/bench_data_prep.py`` (about 20 s on a 2-core machine). It writes 480 photo-like RGB JPEGs
(500 px wide, 300-500 px high, quality 90, 4:2:0 like camera files: kept as original bytes, fully decoded
for the check) in the CUB layout, shards them with 1 and with 2 worker processes (interleaved, best of 3 runs each) and
prints images/s, images/s per core, the 1 -> 2 core speed-up, Pillow decode-only images/s on one core for
reference, and the time to shard full CUB (11,788 images) and ImageNet (1,331,167 images) extrapolated from
the measured rates (ImageNet's mean image, about 400x350, is close to CUB's in pixels).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from the repo root

from data_prep.cub import shard_cub  # noqa: E402
from data_prep.shards import ShardOptions, available_cores  # noqa: E402

NUM_IMAGES = 480
SHARD_SIZE = 30  # 16 shards: enough parallel units for 2 workers
REPEATS = 3
NUM_CUB = 11_788
NUM_IMAGENET = 1_281_167 + 50_000


def photo_like_jpeg(rng: np.random.Generator) -> bytes:
    """A smooth random scene with some fine texture, encoded like a camera JPEG."""
    width, height = 500, int(rng.integers(300, 501))
    coarse = rng.uniform(0, 255, size=(height // 25 + 2, width // 25 + 2, 3)).astype(np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    scene += rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_cub_layout(root: Path, num_images: int) -> tuple[Path, list[bytes]]:
    rng = np.random.default_rng(0)
    images = [photo_like_jpeg(rng) for _ in range(num_images)]
    (root / "images" / "001.Bench").mkdir(parents=True)
    lines = {name: [] for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")}
    for image_id, data in enumerate(images, start=1):
        (root / "images" / "001.Bench" / f"{image_id}.jpg").write_bytes(data)
        lines["images.txt"].append(f"{image_id} 001.Bench/{image_id}.jpg")
        lines["image_class_labels.txt"].append(f"{image_id} 1")
        lines["train_test_split.txt"].append(f"{image_id} {image_id % 2}")
        lines["bounding_boxes.txt"].append(f"{image_id} 0 0 10 10")
    for name, text in lines.items():
        (root / name).write_text("\n".join(text) + "\n")
    (root / "classes.txt").write_text("1 001.Bench\n")
    return root, images


def time_sharding(src: Path, out: Path, workers: int) -> float:
    """Wall time of one full sharding run into a fresh folder."""
    start = time.perf_counter()
    shard_cub(src, str(out), ShardOptions(shard_size=SHARD_SIZE, workers=workers, verbose=False))
    return time.perf_counter() - start


def decode_only_rate(images: list[bytes]) -> float:
    start = time.perf_counter()
    for data in images:
        Image.open(io.BytesIO(data)).load()
    return len(images) / (time.perf_counter() - start)


def main() -> dict:
    """Measures and returns the figures (also printed)."""
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.1f} before the run; other processes share these cores", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        src, images = write_cub_layout(Path(tmp) / "CUB_200_2011", NUM_IMAGES)
        seconds = {1: float("inf"), 2: float("inf")}
        for attempt in range(REPEATS):  # interleaved, best of each: warm-up and noise hit both arms alike
            for workers in (1, 2):
                elapsed = time_sharding(src, Path(tmp) / f"out_{workers}_{attempt}", workers)
                seconds[workers] = min(seconds[workers], elapsed)
        seconds_1, seconds_2 = seconds[1], seconds[2]
        decode_rate = decode_only_rate(images)
    rate_1, rate_2 = NUM_IMAGES / seconds_1, NUM_IMAGES / seconds_2
    figures = {
        "num_images": NUM_IMAGES,
        "mean_jpeg_kib": round(sum(map(len, images)) / len(images) / 1024, 1),
        "cores_available": available_cores(),
        "load_average_before": round(load_before, 2),
        "img_per_s_1_core": round(rate_1, 1),
        "img_per_s_2_cores": round(rate_2, 1),
        "img_per_s_per_core_2_cores": round(rate_2 / 2, 1),
        "speedup_1_to_2_cores": round(rate_2 / rate_1, 2),
        "decode_only_img_per_s_1_core": round(decode_rate, 1),
        "cub_full_seconds_2_cores": round(NUM_CUB / rate_2, 1),
        "imagenet_full_hours_2_cores": round(NUM_IMAGENET / rate_2 / 3600, 2),
        "imagenet_full_minutes_32_cores_if_linear": round(NUM_IMAGENET / (rate_2 / 2 * 32) / 60, 1),
    }
    print(f"data_prep sharding, {NUM_IMAGES} CUB-sized JPEGs ({figures['mean_jpeg_kib']} KiB mean), decode check on")
    print(f"  1 core : {rate_1:7.1f} img/s")
    print(f"  2 cores: {rate_2:7.1f} img/s  ({rate_2 / 2:.1f} img/s per core), speed-up {rate_2 / rate_1:.2f}x")
    print(f"  Pillow decode only, 1 core: {decode_rate:.1f} img/s")
    print(f"  full CUB (11,788) at 2 cores: {figures['cub_full_seconds_2_cores']} s")
    print(f"  full ImageNet (1.33M) at 2 cores: {figures['imagenet_full_hours_2_cores']} h; "
          f"at 32 cores if per-core rate holds: {figures['imagenet_full_minutes_32_cores_if_linear']} min")
    return figures


if __name__ == "__main__":
    main()
