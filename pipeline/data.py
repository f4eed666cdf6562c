"""Ray Data path: data_prep shards → decode + augment on CPU workers → uint8 batches for Train.

Rows never fail a read task. A sample whose image does not decode, and the unread tail of a
truncated tar, become rows with `valid=False` and an `error`; the Train worker drops them from its
batch and counts them, so every skipped sample is reported with the epoch's metrics by key.

The read tasks run `pipeline.decode`'s pure functions over numpy batches (`decode_batch`, or
`sample_crops` with `data.decode=gpu`), tested directly and through a tiny Ray dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
from ray.data.datasource import FileBasedDatasource, FileShuffleConfig

from pipeline.config import DataConfig
from pipeline.decode import column, decode_batch, iter_tar_samples, sample_crops
from pipeline.tasks import Task


# ---------------------------------------------------------------- reading tars

class ShardDatasource(FileBasedDatasource):
    """data_prep tars, a group of them per read task (`num_read_tasks`); bad content becomes error rows,
    never an exception.

    The read task applies `transform` to every `rows_per_block` rows as it reads and yields its output
    (decoded crops, or JPEG bytes and crops to cut): one Ray Data stage instead of a read stage and a
    map stage, and the JPEG bytes never become an Arrow table of their own.
    """

    _FILE_EXTENSIONS = ["tar"]

    def __init__(
        self,
        paths: list[str],
        *,
        transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        rows_per_block: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(paths, **kwargs)
        self._transform = transform
        self._rows_per_block = rows_per_block

    def _read_stream(self, f: Any, path: str) -> Iterator[Any]:
        rows: list[dict[str, Any]] = []
        for sample in iter_tar_samples(f, path):
            rows.append(sample)
            if len(rows) == self._rows_per_block:
                yield self._block(rows)
                rows = []
        if rows:
            yield self._block(rows)

    def _block(self, rows: list[dict[str, Any]]) -> Any:
        from ray.data.block import BlockAccessor

        columns = {name: column([row[name] for row in rows]) for name in rows[0]}
        return BlockAccessor.batch_to_block(self._transform(columns))


# ---------------------------------------------------------------- datasets

def build_dataset(
    cfg: DataConfig, urls: list[str], *, train: bool, seed: int, task: Task, num_samples: int | None = None
) -> Any:
    """A Ray dataset of decoded, augmented uint8 batches with the task's target columns, or, with
    `data.decode=gpu`, of JPEG bytes and their crops for the Train worker to decode (`decode_on_device`).

    One stage: each read task reads its tars and decodes as it reads (`num_read_tasks`).

    Args:
        cfg: data options.
        urls: shard URLs (local paths or s3://, gs://).
        train: shuffle files every epoch and augment; else a fixed order and centre crops.
        seed: seeds the per-epoch file order.
        task: decodes the targets (`Task.targets`).
        num_samples: samples in `urls` (the manifest's count), for `num_read_tasks`; None: a task per tar.
    """
    import ray
    from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY

    options = dict(resize_size=cfg.resize_size, crop_size=cfg.crop_size, train=train, task=task, hflip=cfg.hflip,
                   max_pixels=cfg.max_pixels)
    if cfg.decode == "gpu":
        transform, row_bytes = partial(sample_crops, **options), 256 * 1024  # a JPEG, generously
    else:
        transform, row_bytes = partial(decode_batch, **options), 3 * cfg.crop_size**2
    # Files are reshuffled every epoch (every execution of the dataset), reproducibly from the seed.
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if train else None
    rows_per_block = _rows_per_block(row_bytes, cfg.batch_size)
    datasource = ShardDatasource(urls, shuffle=shuffle, transform=transform, rows_per_block=rows_per_block)
    cpus = int(ray.cluster_resources().get("CPU", 0) // cfg.num_cpus_per_read)
    num_tasks = num_read_tasks(len(urls), num_samples, cpus) if num_samples is not None else len(urls)
    ds = ray.data.read_datasource(datasource, num_cpus=cfg.num_cpus_per_read, override_num_blocks=num_tasks)
    # Not 128 MiB: a read task's blocks stream out as they are made. Just under a block of crops, so each leaves
    # alone, whole (Ray merges smaller ones and cuts at 1.5x the target, which would split batches).
    ds.context.target_max_block_size = BLOCK_BYTES if cfg.decode == "gpu" else rows_per_block * row_bytes
    ds.context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, _backpressure_policies())
    ds.context.enable_progress_bars = False  # the training loop prints a line per epoch with img/s
    ds.context.print_on_execution_start = False
    return ds


BLOCK_BYTES = 64 * 1024 * 1024  # an output block holds at most about this many bytes


def _rows_per_block(row_bytes: int, batch_size: int) -> int:
    """Rows per output block: a whole number of batches within `BLOCK_BYTES` (32 crops at 768, 256 at 224),
    so a worker's batches are slices of one block, not copies across two (+6% img/s at 768 against 37-row
    blocks; docs/results.md#data-path)."""
    rows = max(1, min(256, BLOCK_BYTES // row_bytes))
    return rows - rows % batch_size if rows >= batch_size else rows


MIN_SAMPLES_PER_READ_TASK = 500
MIN_SAMPLES_TO_SPREAD = 100  # below this, another task's new worker costs more than it decodes


def _backpressure_policies() -> list[type]:
    """Ray Data's backpressure policies without the CPU budget (`ResourceBudgetBackpressurePolicy`).

    With one read stage, Ray 2.60's budget held every second read task back: on 2 CPUs, the
    second task started a second after the first, and each next one 0.25 s after a slot freed
    (`ray.timeline()`), a quarter of the CPUs idle. Output queues stay bounded by the other two
    policies (queue growth and the object store's free share); Ray's own CPU scheduling still caps
    read tasks at the CPUs there are.
    """
    from ray.data._internal.execution.backpressure_policy import (
        ENABLED_BACKPRESSURE_POLICIES,
        ResourceBudgetBackpressurePolicy,
    )

    return [policy for policy in ENABLED_BACKPRESSURE_POLICIES if policy is not ResourceBudgetBackpressurePolicy]


def num_read_tasks(num_shards: int, num_samples: int, cpus: int) -> int:
    """Read tasks per epoch: a task per tar when tars are large or CPUs many, else tars grouped so a
    task reads at least `MIN_SAMPLES_PER_READ_TASK` samples, keeping two tasks per CPU as long as
    each reads at least `MIN_SAMPLES_TO_SPREAD`.

    Each task costs a fixed ~0.1 CPU-s to start: over 30 tars of 100 CUB-size images on 2 cores,
    a task per tar left a quarter of the CPUs idle (docs/results.md#data-path). A task running at
    once with others also needs its own worker process, and a new one costs ~4.5 CPU-s to start
    (importing torch): spreading a 30-image split over 4 tasks cost 18 CPU-s for 0.01 CPU-s of
    decoding, so a small split stays in fewer tasks. The CPU count is the cluster's now; an
    autoscaling cluster that has none yet still gets a task per 500 samples.
    """
    by_samples = math.ceil(num_samples / MIN_SAMPLES_PER_READ_TASK)
    spread = min(2 * cpus, math.ceil(num_samples / MIN_SAMPLES_TO_SPREAD))
    return max(1, min(num_shards, max(by_samples, spread)))


def exact_eval_data_config(train_name: str = "train") -> Any:
    """Ray Train data config: split `train_name` equally (lockstep steps), every other dataset
    unequally, so evaluation sees each sample exactly once across workers."""
    from ray.train import DataConfig as RayDataConfig

    class ExactEvalDataConfig(RayDataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                if ds.name is None:
                    ds.set_name(name)
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                # equal=True may drop rows; only the training split needs equal step counts.
                splits = ds.streaming_split(world_size, equal=(name == train_name), locality_hints=worker_node_ids)
                for rank, split in enumerate(splits):
                    output[rank][name] = split
            return output

    return ExactEvalDataConfig()
