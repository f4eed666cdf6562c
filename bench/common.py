"""Shared pieces of the benchmarks: demo shards made by data_prep, timing, result rows, machine facts."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One line of bench/results.md: a measured figure against its limit or baseline.

    Attributes:
        benchmark: which benchmark (its number first, as in bench.run.BENCHMARKS) and setting.
        figure: what was measured, with its value and unit.
        baseline: the limit or baseline it is compared with, with its value.
        ratio: figure / baseline (the number the target is about); None when not measured.
        target: the target, in words.
        met: whether the target is met; None when there is no target or nothing was measured.
    """

    benchmark: str
    figure: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Shards:
    """A data_prep shard set of the demo dataset, and the folder of the same JPEGs."""

    urls: list[str]
    jpeg_paths: list[str]
    image_size: tuple[int, int]
    max_side: int | None

    @property
    def num_images(self) -> int:
        return len(self.jpeg_paths)


def make_shards(
    workdir: Path, *, num_images: int, image_size: tuple[int, int], max_side: int | None = None, shard_size: int = 32
) -> Shards:
    """Demo images at `image_size` (CUB photos are about 500x375) sharded by data_prep, both splits.

    Cached under `workdir` by its arguments: a second call returns at once.
    """
    from data_prep.cub import shard_cub
    from data_prep.demo import generate_demo
    from data_prep.shards import ShardOptions

    width, height = image_size
    raw = workdir / f"raw_{num_images}_{width}x{height}"
    root = generate_demo(raw, num_classes=10, num_images=num_images, image_size=image_size)
    out = workdir / f"shards_{num_images}_{width}x{height}_{max_side or 'orig'}"
    if not (out / "manifest.json").is_file():
        shard_cub(root, str(out), ShardOptions(shard_size=shard_size, max_side=max_side, verbose=False))
    urls = sorted(str(p) for p in out.glob("*.tar"))
    jpeg_paths = sorted(str(p) for p in (root / "images").glob("*/*.jpg"))
    return Shards(urls=urls, jpeg_paths=jpeg_paths, image_size=image_size, max_side=max_side)


def best_of(repeats: int, variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Runs every variant `repeats` times, interleaved, and keeps each one's best (largest) rate.

    Interleaving spreads warm-up and the load of other processes over every variant alike.
    """
    best = {name: 0.0 for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            best[name] = max(best[name], run())
    return best


def timed_rate(count: Callable[[], int]) -> float:
    """Items per second of one call of `count`, which returns how many items it handled."""
    started = time.perf_counter()
    num = count()
    return num / (time.perf_counter() - started)


def machine() -> dict[str, Any]:
    """Where and with what the figures were measured."""
    import numpy
    import PIL
    import torch
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
                "numpy": numpy.__version__, "pillow": PIL.__version__}
    for name in ("ray", "deepspeed", "timm"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def script_main(run: Callable[..., dict[str, Any]], doc: str | None) -> None:
    """The command line of a benchmark file run on its own: `--quick`, `--workdir`; prints its figures."""
    import argparse
    import json
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=None, help="cache of demo images and shards (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        print(json.dumps(run(Path(args.workdir or tmp), quick=args.quick)["figures"], indent=2))
