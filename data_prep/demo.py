"""The demo task: a small CUB-layout dataset whose class lives in near-pixel-scale texture.

What a learned resizer can win on and plain bilinear cannot: each class is a texture whose per-axis period is
2.0-2.15 px, where a 2x bilinear downscale (for exactly 2x, a 2x2 average) has a zero in its frequency
response, so bilinear blurs the class away (or aliases it), while a learned resizer can move that energy to
frequencies the smaller image still holds. Everything coarse is nuisance, drawn independently of the class:

- background: a linear gradient between two random colours in a random direction;
- object: an ellipse covering about 50-80% of the frame, centred with +-6% jitter and up to 15 degrees of
  rotation, so any 128-192 px crop near the centre is mostly texture (the training side feeds 1:1 crops);
- object colour, a soft shading gradient across it, texture contrast (0.06-0.15 of full scale, RMS) and
  period (2.0-2.15 px), random phases, plus Gaussian luminance noise per pixel (sigma 1% of full scale).

Every texture is zero-mean with unit RMS before scaling, so the class shows neither in mean colour nor in
low frequencies. Textures (class order): vertical grating, horizontal grating, checkerboard, high-pass noise,
diagonal grating, anti-diagonal grating, dot lattice, steep grating (fx:fy = 2:1), shallow grating (1:2) and
their mirrors, plaid; 2 to 12 classes. The texture is added to luminance only (equal in R, G, B) and saved as
JPEG quality 96 with 4:4:4 chroma: chroma subsampling or lower quality would erase pixel-scale detail.

Images are written as ``DIR/CUB_200_2011`` in the exact CUB layout (images.txt, image_class_labels.txt,
train_test_split.txt with about half of each class for training, classes.txt, bounding_boxes.txt holding the
ellipse's box), then ``demo.json`` with the generation parameters; a second call with the same parameters
returns at once (a cache). Each image draws from its own seeded generator, so the output does not depend on
the number of worker processes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from data_prep.records import DataPrepError
from data_prep.shards import available_cores

PERIOD_RANGE = (2.0, 2.15)
CONTRAST_RANGE = (0.06, 0.15)
PIXEL_NOISE = 0.01
JPEG_QUALITY = 96
MARKER = "demo.json"

Texture = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]


def _grating(fx: float, fy: float) -> Texture:
    # fx, fy: per-axis frequency in units of 1/period, so (1, 0) is a vertical grating of the drawn period
    def texture(x: np.ndarray, y: np.ndarray, omega: float, rng: np.random.Generator) -> np.ndarray:
        return np.cos(omega * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))

    return texture


def _checkerboard(x: np.ndarray, y: np.ndarray, omega: float, rng: np.random.Generator) -> np.ndarray:
    return np.cos(omega * x + rng.uniform(0, 2 * np.pi)) * np.cos(omega * y + rng.uniform(0, 2 * np.pi))


def _dot_lattice(x: np.ndarray, y: np.ndarray, omega: float, rng: np.random.Generator) -> np.ndarray:
    bumps = (1 + np.cos(omega * x + rng.uniform(0, 2 * np.pi))) * (1 + np.cos(omega * y + rng.uniform(0, 2 * np.pi)))
    return bumps - 1.0


def _plaid(x: np.ndarray, y: np.ndarray, omega: float, rng: np.random.Generator) -> np.ndarray:
    return np.cos(omega * x + rng.uniform(0, 2 * np.pi)) + np.cos(omega * y + rng.uniform(0, 2 * np.pi))


def _highpass_noise(x: np.ndarray, y: np.ndarray, omega: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    padded = np.pad(noise, 1, mode="reflect")
    blurred = sum(padded[i : i + noise.shape[0], j : j + noise.shape[1]] for i in range(3) for j in range(3)) / 9.0
    return noise - blurred


TEXTURES: list[tuple[str, Texture]] = [
    ("Vertical_Grating", _grating(1, 0)),
    ("Horizontal_Grating", _grating(0, 1)),
    ("Checkerboard", _checkerboard),
    ("Highpass_Noise", _highpass_noise),
    ("Diagonal_Grating", _grating(1, 1)),
    ("Antidiagonal_Grating", _grating(1, -1)),
    ("Dot_Lattice", _dot_lattice),
    ("Steep_Grating", _grating(1, 0.5)),
    ("Shallow_Grating", _grating(0.5, 1)),
    ("Steep_Grating_Mirrored", _grating(1, -0.5)),
    ("Shallow_Grating_Mirrored", _grating(-0.5, 1)),
    ("Plaid", _plaid),
]


def class_names(num_classes: int) -> list[str]:
    """CUB-style class folder names of the demo classes, e.g. ``001.Vertical_Grating``."""
    return [f"{i + 1:03d}.{name}" for i, (name, _) in enumerate(TEXTURES[:num_classes])]


@functools.lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y.flags.writeable = x.flags.writeable = False  # shared between images
    return y, x


def render_image(
    label: int, width: int, height: int, rng: np.random.Generator, contrast: float | None = None
) -> tuple[np.ndarray, list[float]]:
    """Draws one demo image.

    Args:
        label: class index (which texture).
        width: image width in pixels.
        height: image height in pixels.
        rng: the image's random generator.
        contrast: RMS texture contrast (fraction of full scale); None draws it from CONTRAST_RANGE.

    Returns:
        The image as uint8 (height, width, 3), and the object's bounding box [x, y, w, h].
    """
    y, x = _pixel_grid(height, width)  # (H, W) each

    # background: gradient between two colours along a random direction
    angle = rng.uniform(0, 2 * np.pi)
    ramp = x * float(np.cos(angle)) + y * float(np.sin(angle))
    low, high = float(ramp.min()), float(ramp.max())
    ramp -= low
    ramp *= 1.0 / max(high - low, 1e-6)
    color_a, color_b = rng.uniform(0.1, 0.9, size=(2, 3))

    # object: a large, roughly centred, rotated ellipse with a soft 2-px edge
    center_x = width / 2 + rng.uniform(-0.06, 0.06) * width
    center_y = height / 2 + rng.uniform(-0.06, 0.06) * height
    semi_x, semi_y = rng.uniform(0.8, 1.0) * width / 2, rng.uniform(0.8, 1.0) * height / 2
    tilt = float(np.deg2rad(rng.uniform(-15, 15)))
    dx, dy = x - center_x, y - center_y
    cos_tilt, sin_tilt = float(np.cos(tilt)), float(np.sin(tilt))  # Python floats keep the arrays float32
    u = (dx * cos_tilt + dy * sin_tilt) / semi_x
    v = (-dx * sin_tilt + dy * cos_tilt) / semi_y
    mask = np.clip((1.0 - np.sqrt(u * u + v * v)) * (min(semi_x, semi_y) / 2.0), 0.0, 1.0)

    object_color = rng.uniform(0.25, 0.75, size=3)
    shading = 1.0 + 0.2 * (u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1))
    omega = 2 * np.pi / rng.uniform(*PERIOD_RANGE)
    texture = TEXTURES[label][1](x, y, omega, rng)
    if contrast is None:
        contrast = rng.uniform(*CONTRAST_RANGE)
    texture *= contrast / max(float(np.sqrt(np.mean(texture * texture))), 0.3)  # equal power
    # luminance detail: texture inside the object, noise everywhere, equal in R, G and B
    detail = texture * mask + PIXEL_NOISE * rng.standard_normal((height, width), dtype=np.float32)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for channel in range(3):
        background = float(color_a[channel]) + float(color_b[channel] - color_a[channel]) * ramp
        value = background + mask * (float(object_color[channel]) * shading - background) + detail
        value *= 255.0
        np.clip(np.rint(value, out=value), 0, 255, out=value)
        pixels[..., channel] = value
    half_w = np.hypot(semi_x * np.cos(tilt), semi_y * np.sin(tilt))
    half_h = np.hypot(semi_x * np.sin(tilt), semi_y * np.cos(tilt))
    left, top = max(0.0, center_x - half_w), max(0.0, center_y - half_h)
    right, bottom = min(float(width), center_x + half_w), min(float(height), center_y + half_h)
    bbox = [round(left, 1), round(top, 1), round(right - left, 1), round(bottom - top, 1)]
    return pixels, bbox


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """JPEG bytes that keep pixel-scale luminance detail (quality 96, 4:4:4)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


# (image id, texture label, output path, width, height, seed, contrast or None)
RenderJob = tuple[int, int, str, int, int, int, float | None]


def _write_image(job: RenderJob) -> list[float]:
    image_id, label, path, width, height, seed, contrast = job
    pixels, bbox = render_image(label, width, height, np.random.default_rng([seed, image_id]), contrast)
    Path(path).write_bytes(encode_jpeg(pixels))
    return bbox


def render_all(jobs: list[RenderJob], workers: int | None) -> list[list[float]]:
    """Renders and writes every image (in worker processes); returns the bounding boxes in job order."""
    num_workers = min(workers or available_cores(), len(jobs))
    if num_workers <= 1:
        return [_write_image(job) for job in jobs]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        return list(pool.map(_write_image, jobs, chunksize=16))


def is_cached(root: Path, params: dict) -> bool:
    """True if `root` holds a finished demo made with `params`; else clears it for a fresh one.

    Raises:
        DataPrepError: `root` holds something that is not a demo dataset.
    """
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return True
    if root.exists():
        if not marker.is_file() and any(root.iterdir()):
            raise DataPrepError(f"{root}: exists and is not a demo dataset; choose another --out")
        shutil.rmtree(root)
    return False


def mark_done(root: Path, params: dict) -> None:
    """Written last: a half-written dataset has no marker and is redone."""
    (root / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")


def check_size(num_images: int, minimum: int, image_size: tuple[int, int]) -> None:
    if num_images < minimum:
        raise ValueError(f"num_images must be at least {minimum}, got {num_images}")
    if min(image_size) < 16:
        raise ValueError(f"image_size must be at least 16x16, got {image_size[0]}x{image_size[1]}")


def check_classes(num_classes: int, num_images: int, image_size: tuple[int, int]) -> None:
    """The arguments of a demo whose class is the texture: 2 to 12 classes, 2 images per class at least."""
    if not 2 <= num_classes <= len(TEXTURES):
        raise ValueError(f"num_classes must be in 2..{len(TEXTURES)}, got {num_classes}")
    check_size(num_images, 2 * num_classes, image_size)


def generate_demo(
    out_dir: str | Path,
    num_classes: int = 10,
    num_images: int = 600,
    seed: int = 0,
    image_size: tuple[int, int] = (500, 375),
    workers: int | None = None,
) -> Path:
    """Writes the demo dataset in the CUB_200_2011 layout (or returns the cached one).

    Args:
        out_dir: parent folder; the dataset goes to ``out_dir/CUB_200_2011``.
        num_classes: number of texture classes, 2 to 12.
        num_images: total images, split evenly over the classes and about half/half into train/test.
        seed: seed of everything random.
        image_size: (width, height) of every image; the default is a typical CUB photo.
        workers: processes drawing images; None uses every core.

    Returns:
        The ``CUB_200_2011`` folder, ready for `data_prep.cub.shard_cub`.

    Raises:
        ValueError: an argument is out of range.
        DataPrepError: the target folder holds something that is not a demo dataset.
    """
    check_classes(num_classes, num_images, image_size)
    width, height = image_size
    root = Path(out_dir).resolve() / "CUB_200_2011"
    params = {"num_classes": num_classes, "num_images": num_images, "seed": seed, "image_size": [width, height]}
    if is_cached(root, params):
        return root

    names = class_names(num_classes)
    labels = [i * num_classes // num_images for i in range(num_images)]  # contiguous per class, like CUB ids
    split_rng = np.random.default_rng([seed, 1])
    is_train = np.zeros(num_images, dtype=int)
    for label in range(num_classes):
        ids = [i for i, lab in enumerate(labels) if lab == label]
        is_train[split_rng.permutation(ids)[: (len(ids) + 1) // 2]] = 1
    relative_paths = []
    for i, label in enumerate(labels):
        folder = names[label]
        relative_paths.append(f"{folder}/{folder.split('.', 1)[1]}_{i + 1:04d}.jpg")
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)

    jobs: list[RenderJob] = [
        (i + 1, labels[i], str(root / "images" / relative_paths[i]), width, height, seed, None) for i in range(num_images)
    ]
    boxes = render_all(jobs, workers)

    ids = range(1, num_images + 1)
    _write_lines(root / "images.txt", [f"{i} {p}" for i, p in zip(ids, relative_paths)])
    _write_lines(root / "image_class_labels.txt", [f"{i} {lab + 1}" for i, lab in zip(ids, labels)])
    _write_lines(root / "train_test_split.txt", [f"{i} {t}" for i, t in zip(ids, is_train)])
    _write_lines(root / "classes.txt", [f"{i + 1} {name}" for i, name in enumerate(names)])
    _write_lines(root / "bounding_boxes.txt", [f"{i} {' '.join(str(v) for v in box)}" for i, box in zip(ids, boxes)])
    mark_done(root, params)
    return root


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))
