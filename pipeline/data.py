"""Ray Data path: data_prep shards → decode + augment on CPU workers → uint8 batches for Train.

Rows never fail a read task. A sample whose image does not decode, and the unread tail of a
truncated tar, become rows with `valid=False` and an `error`; the Train worker drops them from its
batch and counts them, so every skipped sample is reported with the epoch's metrics by key.

Transforms are pure functions over numpy batches (`decode_batch`), tested directly and through
a tiny Ray dataset.
"""

from __future__ import annotations

import io
import math
import posixpath
import tarfile
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
from ray.data.datasource import FileBasedDatasource, FileShuffleConfig

from pipeline.config import MAX_IMAGE_PIXELS, DataConfig
from pipeline.tasks import Task


# ---------------------------------------------------------------- reading tars

def iter_tar_samples(stream: Any, shard: str) -> Iterator[dict[str, Any]]:
    """Groups a WebDataset tar stream into samples; a truncated or corrupt tar ends in one error row.

    Yields:
        Rows with key, jpg (bytes), label (int, -1 when absent), meta (JSON text), shard, error.
    """
    current: dict[str, Any] | None = None
    count = 0

    def row(sample: dict[str, Any]) -> dict[str, Any]:
        label = sample.get("cls")
        return {
            "key": sample["key"],
            "jpg": sample.get("jpg", b""),
            "label": int(label) if label not in (None, b"") else -1,
            "meta": sample.get("json", b"{}").decode("utf-8", "replace"),
            "shard": shard,
            "error": "" if "jpg" in sample else "sample has no jpg member",
        }

    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                key, _, ext = base.partition(".")
                data = tar.extractfile(member).read()
                if current is not None and current["key"] != key:
                    yield row(current)
                    count += 1
                    current = None
                if current is None:
                    current = {"key": key}
                current[ext] = data
        if current is not None:
            yield row(current)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        # The partial sample in flight (if any) is reported as lost together with the tail.
        lost = current["key"] if current else "<none>"
        yield {
            "key": f"{posixpath.basename(shard)}@{count}",
            "jpg": b"",
            "label": -1,
            "meta": "{}",
            "shard": shard,
            "error": f"truncated or corrupt tar after {count} samples (at {lost}): {type(err).__name__}: {err}",
        }


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

        columns = {name: _column([row[name] for row in rows]) for name in rows[0]}
        return BlockAccessor.batch_to_block(self._transform(columns))


def _column(values: list[Any]) -> np.ndarray:
    """A 1-D object array of one column's values (bytes, text, numbers), as `decode_batch` takes them."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


# ---------------------------------------------------------------- transforms (pure)

class ImageTooLarge(ValueError):
    """An image over `data.max_pixels`: skipped before it is decoded."""


def _image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(height, width) from the image's header, before any pixel is decoded; raises on an image over
    `max_pixels` and on data that is no image."""
    from PIL import Image

    width, height = Image.open(io.BytesIO(data)).size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image too large: {width} x {height} pixels, over data.max_pixels={max_pixels}")
    return height, width


def _is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def _decode(jpg: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """(3, H, W) uint8 RGB tensor; raises on truncated or undecodable data, and on an image over
    `max_pixels` (read from its header, before any pixel is decoded).

    JPEGs go through libjpeg-turbo (torchvision), which refuses a truncated file as Pillow does;
    anything else (a PNG behind .jpg) through Pillow.
    """
    _image_size(jpg, max_pixels)
    return _decode_checked(jpg)


def _decode_checked(data: bytes) -> Any:
    """`_decode` without the header check (already made)."""
    import torch
    from PIL import Image

    if _is_jpeg(data):
        from torchvision.io import ImageReadMode, decode_jpeg

        # bytearray: torch wants a writable buffer; the copy costs ~1% of a decode.
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    image = Image.open(io.BytesIO(data))
    image.load()  # raises on truncated data: never decode a half image silently
    return _pil_to_tensor(image)


def _pil_to_tensor(image: Any) -> Any:
    import torch

    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)  # (H, W, 3)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


@dataclass(frozen=True)
class Crop:
    """Where one image's training or evaluation crop comes from, decided before it is decoded.

    Attributes:
        height, width: the size the decoded image is resized to first (its own size: no resize).
        top, left: the crop's corner in the resized image.
        flip: mirror the crop horizontally.
    """

    height: int
    width: int
    top: int
    left: int
    flip: bool


def draw_crop(
    height: int, width: int, *, resize_size: int | None, crop_size: int, train: bool, hflip: bool, rng: np.random.Generator
) -> Crop:
    """The crop of an image of `height` x `width`: resize (square, aspect not kept) → random or centre
    crop → optional flip; the draws (top, left, then the flip) are the same on the CPU and GPU paths.

    Args:
        resize_size: square side to resize to first; None keeps the image's own scale (an image
            smaller than the crop is scaled up just enough).
        crop_size: output side.
        train: random crop and flip; else centre crop.
        hflip: flip with probability 0.5 in training.
        rng: randomness for crop and flip.
    """
    if resize_size is not None:
        height = width = resize_size
    elif min(height, width) < crop_size:
        scale = crop_size / min(height, width)
        height, width = max(crop_size, round(height * scale)), max(crop_size, round(width * scale))
    if train:
        top = int(rng.integers(0, height - crop_size + 1))
        left = int(rng.integers(0, width - crop_size + 1))
    else:
        top, left = (height - crop_size) // 2, (width - crop_size) // 2
    flip = bool(train and hflip and rng.random() < 0.5)
    return Crop(height, width, top, left, flip)


def apply_crop(pixels: Any, crop: Crop, crop_size: int) -> Any:
    """(3, crop_size, crop_size) uint8 tensor on `pixels`' device from a decoded (3, H, W) uint8 tensor.

    The resize is torchvision's bilinear with antialiasing, which gives Pillow's BILINEAR pixels
    at about 3x its speed.
    """
    from torchvision.transforms.v2 import functional as F

    if tuple(pixels.shape[1:]) != (crop.height, crop.width):
        pixels = F.resize(pixels, [crop.height, crop.width], antialias=True)
    out = pixels[:, crop.top : crop.top + crop_size, crop.left : crop.left + crop_size]
    return out.flip(-1) if crop.flip else out


def transform_image(
    image: Any,
    *,
    resize_size: int | None,
    crop_size: int,
    train: bool,
    hflip: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """Resize → random or centre crop → optional flip (`draw_crop`, `apply_crop`).

    Args:
        image: a decoded RGB PIL image, or a uint8 tensor (3, H, W).
        resize_size, crop_size, train, hflip, rng: see `draw_crop`.

    Returns:
        uint8 array (3, crop_size, crop_size).
    """
    import torch

    pixels = image if isinstance(image, torch.Tensor) else _pil_to_tensor(image)  # (3, H, W)
    crop = draw_crop(*pixels.shape[1:], resize_size=resize_size, crop_size=crop_size, train=train, hflip=hflip, rng=rng)
    return np.ascontiguousarray(apply_crop(pixels, crop, crop_size).numpy())


def _flag_rows(batch: dict[str, np.ndarray], task: Task | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The task's target columns, and per row why it cannot be used ("" when it can)."""
    num_rows = len(batch["key"])
    targets, target_errors = task.targets(batch) if task is not None else ({}, [""] * num_rows)
    errors = np.asarray(batch["error"], dtype=object).copy()
    for i in range(num_rows):
        errors[i] = errors[i] or target_errors[i]
    return targets, errors


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    resize_size: int | None,
    crop_size: int,
    train: bool,
    task: Task | None,
    hflip: bool = True,
    seed: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> dict[str, np.ndarray]:
    """Decodes and augments a batch of shard rows and decodes their targets; never raises on bad samples.

    Args:
        batch: columns key, jpg, label, meta, error (as read from the shards).
        resize_size: see `draw_crop`.
        crop_size: see `draw_crop`.
        train: training (random) or evaluation (centre) transform.
        task: decodes the target columns (`Task.targets`: label for classification, scores for quality);
            None for images without targets (`pipeline.predict`).
        hflip: random horizontal flip in training.
        seed: fixes the augmentation (tests); None draws fresh randomness.
        max_pixels: larger images are skipped unread (`data.max_pixels`).

    Returns:
        pixels uint8 (B, 3, crop, crop), the task's target columns, key (B,), valid bool (B,),
        error (B,): invalid rows carry zero pixels and the reason.
    """
    sampled = sample_crops(batch, resize_size=resize_size, crop_size=crop_size, train=train, task=task, hflip=hflip,
                           seed=seed, max_pixels=max_pixels)
    out = decode_on_device(sampled, crop_size=crop_size, device="cpu")  # the read task's CPU
    return {**out, "pixels": out["pixels"].numpy()}


def sample_crops(
    batch: dict[str, np.ndarray],
    *,
    resize_size: int | None,
    crop_size: int,
    train: bool,
    task: Task | None,
    hflip: bool = True,
    seed: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> dict[str, np.ndarray]:
    """What `data.decode=gpu` ships to the Train worker: each row's JPEG bytes and its crop, drawn as
    `decode_batch` draws it (same seed, same crops), from the image's header; `decode_on_device`
    decodes them. Rows that cannot be used carry `valid=False`, no bytes and the reason.

    Returns:
        jpg (B,) bytes, top, left, height, width (B,) int32, flip (B,) bool, the task's target columns,
        key, valid, error.
    """
    rng = np.random.default_rng(seed)
    targets, errors = _flag_rows(batch, task)
    num_rows = len(errors)
    jpg = np.empty(num_rows, dtype=object)
    jpg[:] = [b""] * num_rows
    crops = np.zeros((num_rows, 4), np.int32)  # height, width, top, left
    flip = np.zeros(num_rows, bool)
    for i in range(num_rows):
        if errors[i]:
            continue
        try:
            height, width = _image_size(batch["jpg"][i], max_pixels)
        except ImageTooLarge as err:
            errors[i] = str(err)
            continue
        except Exception as err:  # noqa: BLE001 - not an image at all: skipped and counted
            from PIL import UnidentifiedImageError

            reason = "no image format Pillow knows" if isinstance(err, UnidentifiedImageError) else err
            errors[i] = f"undecodable image: {type(err).__name__}: {reason}"
            continue
        crop = draw_crop(height, width, resize_size=resize_size, crop_size=crop_size, train=train, hflip=hflip, rng=rng)
        crops[i] = crop.height, crop.width, crop.top, crop.left
        flip[i] = crop.flip
        jpg[i] = batch["jpg"][i]
    return {
        "jpg": jpg,
        "height": crops[:, 0], "width": crops[:, 1], "top": crops[:, 2], "left": crops[:, 3], "flip": flip,
        **targets,
        "key": np.asarray(batch["key"], dtype=object),
        "valid": errors == "",
        "error": errors.astype(str),
    }


def decode_on_device(batch: dict[str, Any], *, crop_size: int, device: Any) -> dict[str, Any]:
    """Decodes `sample_crops`' rows on `device` and cuts their crops: the JPEGs in one batched call
    (nvJPEG on a GPU, libjpeg-turbo on a CPU), anything else through Pillow; an image that does not
    decode becomes an invalid row with the reason, as on the CPU path.

    Returns:
        The batch without its JPEG bytes and crop columns, with pixels uint8 (B, 3, crop, crop) on
        `device`, valid and error updated.
    """
    import torch

    device = torch.device(device)
    valid = np.asarray(batch["valid"], bool).copy()
    errors = np.asarray(batch["error"], dtype=object).copy()
    pixels = torch.zeros((len(valid), 3, crop_size, crop_size), dtype=torch.uint8, device=device)
    rows = np.flatnonzero(valid)
    for i, image in zip(rows, _decode_all([batch["jpg"][i] for i in rows], device)):
        if isinstance(image, Exception):
            valid[i], errors[i] = False, f"undecodable image: {type(image).__name__}: {image}"
            continue
        pixels[i] = apply_crop(image, _crop_of(batch, i), crop_size)
    out = {name: value for name, value in batch.items() if name not in SAMPLED_COLUMNS}
    return {**out, "pixels": pixels, "valid": valid, "error": errors.astype(str)}


SAMPLED_COLUMNS = ("jpg", "height", "width", "top", "left", "flip")  # what `sample_crops` adds


def _crop_of(batch: dict[str, Any], i: int) -> Crop:
    return Crop(int(batch["height"][i]), int(batch["width"][i]), int(batch["top"][i]), int(batch["left"][i]),
                bool(batch["flip"][i]))


def _decode_all(datas: list[bytes], device: Any) -> list[Any]:
    """Each image as a (3, H, W) uint8 tensor on `device`, or the exception its decode raised."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    images: list[Any] = [None] * len(datas)
    jpegs = [i for i, data in enumerate(datas) if _is_jpeg(data)]
    if jpegs:
        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs]
        try:
            for i, image in zip(jpegs, decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)):
                images[i] = image
        except RuntimeError:
            pass  # one bad JPEG fails the batched call: the loop below decodes one at a time
    for i, data in enumerate(datas):
        if images[i] is not None:
            continue
        try:
            if _is_jpeg(data):
                encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                images[i] = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
            else:
                images[i] = _decode_checked(data).to(device)
        except Exception as err:  # noqa: BLE001 - any undecodable image is skipped and counted
            images[i] = err
    return images


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
