"""Shard samples to crops, without Ray: reading data_prep tars, decoding (libjpeg-turbo on a CPU, nvJPEG
on a GPU), resize → crop → flip.

The Ray Data read tasks run `decode_batch` (or, with `data.decode=gpu`, `sample_crops`) through
`pipeline.data`; the Train worker runs `decode_on_device`; prediction and the resizer grid read tars
with `iter_tar_samples`. Nothing here imports Ray, so a GPU machine with torch alone can run the decode.

A sample that cannot be used never raises: its row carries `valid=False` and the reason.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import MAX_IMAGE_PIXELS
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


def column(values: list[Any]) -> np.ndarray:
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
