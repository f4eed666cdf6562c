"""Benchmark 1: images/s our Ray Data pipeline delivers to one training worker, against its limits.

Every variant runs the same work, `pipeline.decode.decode_batch` (decode → resize → random crop → flip) over
the same data_prep shards of demo images at CUB size (500x375), on the same cores:

- ray: `pipeline.data.build_dataset` on a local Ray with as many CPUs as cores, iterated like a Train worker
  (`iter_batches(batch_size=8, batch_format="numpy")`), one epoch per measurement; the time includes starting
  the epoch's execution. 3,000 images in 30 shards (`--quick`: 96).
- limit: a plain loop, one process per core (a multiprocessing pool), each reading whole shards and
  decoding them; nothing is returned, so no framework and no transfer: the decode-and-crop limit of the cores.
- dataloader_tar: a torch DataLoader (one worker per core) over an IterableDataset of the same tar shards.
- dataloader_folder: a torch DataLoader (one worker per core) over the folder of the same JPEGs.

    python bench/bench_data_path.py [--quick]     # starts a local Ray
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch.utils.data  # noqa: E402

from bench.common import Row, Shards, best_of, make_shards, timed_rate  # noqa: E402

BATCH_SIZE = 8  # the recipe's micro-batch per worker
SETTINGS = {  # name: (resize_size, crop_size)
    "recipe 1020→768": (1020, 768),
    "small 256→224": (256, 224),
}


def _transform_kwargs(resize_size: int, crop_size: int) -> dict[str, Any]:
    from pipeline.tasks import get_task

    return dict(resize_size=resize_size, crop_size=crop_size, train=True, task=get_task("classification"), hflip=True)


# ---------------------------------------------------------------- the plain-loop limit

def _decode_shard(job: tuple[str, int, int]) -> int:
    from pipeline.decode import decode_batch, iter_tar_samples

    url, resize_size, crop_size = job
    with open(url, "rb") as f:
        rows = list(iter_tar_samples(f, url))
    batch = {name: np.asarray([r[name] for r in rows], dtype=object) for name in rows[0]}
    return int(decode_batch(batch, **_transform_kwargs(resize_size, crop_size))["valid"].sum())


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def limit_rate(pool: Any, shards: Shards, resize_size: int, crop_size: int) -> float:
    jobs = [(url, resize_size, crop_size) for url in shards.urls]
    return timed_rate(lambda: sum(pool.imap_unordered(_decode_shard, jobs)))


# ---------------------------------------------------------------- torch DataLoader baselines

def _one_row(jpg: bytes, key: str, label: int, resize_size: int, crop_size: int) -> dict[str, Any]:
    from pipeline.decode import decode_batch

    batch = {"key": np.asarray([key], dtype=object), "jpg": np.asarray([jpg], dtype=object),
             "label": np.asarray([label]), "meta": np.asarray(["{}"], dtype=object), "error": np.asarray([""], dtype=object)}
    out = decode_batch(batch, **_transform_kwargs(resize_size, crop_size))
    return {"pixels": out["pixels"][0], "label": out["label"][0], "valid": out["valid"][0]}


class TarShards(torch.utils.data.IterableDataset):
    """torch IterableDataset over tar shards; each DataLoader worker reads every num_workers-th shard."""

    def __init__(self, urls: list[str], resize_size: int, crop_size: int):
        self.urls, self.resize_size, self.crop_size = urls, resize_size, crop_size

    def __iter__(self):
        from pipeline.decode import iter_tar_samples

        info = torch.utils.data.get_worker_info()
        urls = self.urls[info.id :: info.num_workers] if info else self.urls
        for url in urls:
            with open(url, "rb") as f:
                for row in iter_tar_samples(f, url):
                    yield _one_row(row["jpg"], row["key"], row["label"], self.resize_size, self.crop_size)


class JpegFolder(torch.utils.data.Dataset):
    """torch map-style Dataset over a folder of JPEGs, like torchvision's ImageFolder."""

    def __init__(self, paths: list[str], resize_size: int, crop_size: int):
        self.paths, self.resize_size, self.crop_size = paths, resize_size, crop_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with open(self.paths[index], "rb") as f:
            return _one_row(f.read(), str(index), 0, self.resize_size, self.crop_size)


def dataloader_rate(dataset: Any, num_workers: int) -> float:
    def count() -> int:
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=num_workers,
                                             shuffle=isinstance(dataset, JpegFolder))
        return sum(int(batch["valid"].sum()) for batch in loader)

    return timed_rate(count)


# ---------------------------------------------------------------- our Ray Data pipeline

def ray_rate(shards: Shards, resize_size: int, crop_size: int) -> float:
    from pipeline.config import DataConfig
    from pipeline.data import build_dataset
    from pipeline.tasks import get_task

    cfg = DataConfig(path="unused", resize_size=resize_size, crop_size=crop_size, batch_size=BATCH_SIZE)
    ds = build_dataset(cfg, shards.urls, train=True, seed=0, task=get_task("classification"), num_samples=shards.num_images)
    return timed_rate(lambda: sum(int(b["valid"].sum()) for b in ds.iter_batches(batch_size=BATCH_SIZE, batch_format="numpy")))


# ---------------------------------------------------------------- the benchmark

def run(workdir: Path, *, quick: bool = False, num_cores: int | None = None) -> dict[str, Any]:
    """Measures every setting; returns figures and table rows (also printed)."""
    import ray

    num_cores = num_cores or len(os.sched_getaffinity(0))
    num_images, repeats = (96, 2) if quick else (3000, 3)  # repeats: epochs of each variant, interleaved
    shards = make_shards(workdir, num_images=num_images, image_size=(500, 375), shard_size=16 if quick else 100)
    figures: dict[str, Any] = {"num_images": shards.num_images, "num_shards": len(shards.urls), "num_cores": num_cores,
                               "batch_size": BATCH_SIZE, "repeats": repeats, "settings": {}}
    rows = []
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=num_cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = multiprocessing.get_context("spawn")  # no Ray or torch state shared with the pool
    try:
        with context.Pool(num_cores, initializer=_one_thread) as pool:
            for setting, (resize_size, crop_size) in SETTINGS.items():
                if quick and setting.startswith("recipe"):
                    num = 2  # fewer rounds of the expensive setting
                else:
                    num = repeats
                ray_rate(shards, resize_size, crop_size)  # warm-up: Ray workers start, files are cached
                rates = best_of(num, {
                    "ray": lambda: ray_rate(shards, resize_size, crop_size),
                    "limit": lambda: limit_rate(pool, shards, resize_size, crop_size),
                    "dataloader_tar": lambda: dataloader_rate(TarShards(shards.urls, resize_size, crop_size), num_cores),
                    "dataloader_folder": lambda: dataloader_rate(JpegFolder(shards.jpeg_paths, resize_size, crop_size), num_cores),
                })
                figures["settings"][setting] = {name: round(rate, 1) for name, rate in rates.items()}
                print(f"data path, {setting}, {shards.num_images} images, {num_cores} cores (img/s, best of {num}): "
                      + ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()))
                ratio = rates["ray"] / rates["limit"]
                print(f"  ray / limit = {ratio:.2f}; ray / DataLoader tar = {rates['ray'] / rates['dataloader_tar']:.2f}; "
                      f"ray / DataLoader folder = {rates['ray'] / rates['dataloader_folder']:.2f}")
                rows.append(Row(f"1 data path, {setting}", f"Ray Data {rates['ray']:.1f} img/s",
                                f"plain loop {rates['limit']:.1f} img/s", ratio, ">= 0.8x", ratio >= 0.8))
                for name, label in (("dataloader_tar", "tar shards"), ("dataloader_folder", "JPEG folder")):
                    ratio = rates["ray"] / rates[name]
                    rows.append(Row(f"1 data path, {setting}", f"Ray Data {rates['ray']:.1f} img/s",
                                    f"DataLoader, {label} {rates[name]:.1f} img/s", ratio, "> 1x", ratio > 1.0))
    finally:
        if started_ray:
            ray.shutdown()
    return {"figures": figures, "rows": [r.to_dict() for r in rows]}


if __name__ == "__main__":
    from bench.common import script_main

    script_main(run, __doc__)
