"""The demo dataset: CUB layout, and a class that lives in detail a 2x bilinear downscale removes."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.cub import read_cub, shard_cub
from data_prep.demo import TEXTURES, generate_demo
from data_prep.shards import ShardOptions

CROP = 128


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), num_images=200, image_size=(200, 160), seed=3)


def high_frequency_feature(luminance: np.ndarray) -> np.ndarray:
    """Log share of power per region of the frequency plane, over the outer (high) frequencies only."""
    n = luminance.shape[0]
    power = np.abs(np.fft.fftshift(np.fft.fft2(luminance - luminance.mean()))) ** 2
    frequencies = np.fft.fftshift(np.fft.fftfreq(n))
    fy, fx = np.meshgrid(frequencies, frequencies, indexing="ij")
    bins = 8
    index_y = np.clip(((fy + 0.5) * bins).astype(int), 0, bins - 1)
    index_x = np.clip(((fx + 0.5) * bins).astype(int), 0, bins - 1)
    high = np.maximum(np.abs(fy), np.abs(fx)) > 0.3
    histogram = np.zeros((bins, bins))
    np.add.at(histogram, (index_y, index_x), power * high)
    shares = histogram.ravel() / histogram.sum()
    return np.log(shares + 1e-6)


def nearest_centroid_accuracy(root: Path, downscale: bool) -> float:
    spec = read_cub(root)
    features, labels, is_train = [], [], []
    for split, records in spec.splits.items():
        for record in records:
            rgb = np.asarray(Image.open(record.path).convert("RGB"), dtype=np.float32)
            luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            h, w = luminance.shape
            crop = luminance[h // 2 - CROP // 2 : h // 2 + CROP // 2, w // 2 - CROP // 2 : w // 2 + CROP // 2]
            if downscale:  # 2x bilinear, half-pixel centres, no antialias == 2x2 average
                crop = crop.reshape(CROP // 2, 2, CROP // 2, 2).mean(axis=(1, 3))
            features.append(high_frequency_feature(crop))
            labels.append(record.label)
            is_train.append(split == "train")
    x, y, train = np.array(features), np.array(labels), np.array(is_train)
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    centroids = np.array([x[train & (y == c)].mean(0) for c in range(y.max() + 1)])
    predicted = np.argmin(((x[~train][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((predicted == y[~train]).mean())


def test_layout_is_cub(demo_root: Path, tmp_path: Path) -> None:
    spec = read_cub(demo_root)
    assert len(spec.class_names) == 10 and spec.class_names[0] == "001.Vertical_Grating"
    assert len(spec.splits["train"]) == 100 and len(spec.splits["test"]) == 100
    for label in range(10):
        assert sum(r.label == label for r in spec.splits["train"]) == 10
    record = spec.splits["train"][0]
    x, y, w, h = record.meta["bbox"]
    assert Image.open(record.path).size == (200, 160) and 0 <= x and x + w <= 200 and y + h <= 160 and w * h > 0.4 * 200 * 160
    manifest = shard_cub(demo_root, str(tmp_path / "out"), ShardOptions(shard_size=50, verbose=False))
    assert manifest["num_converted"] == 0 and manifest["splits"]["train"]["num_samples"] == 100


def test_class_survives_jpeg_but_not_bilinear_downscale(demo_root: Path) -> None:
    full = nearest_centroid_accuracy(demo_root, downscale=False)
    downscaled = nearest_centroid_accuracy(demo_root, downscale=True)
    assert full >= 0.85, full
    assert downscaled <= full - 0.3, (full, downscaled)


def test_class_not_in_mean_colour(demo_root: Path) -> None:
    spec = read_cub(demo_root)
    means = {}
    for record in spec.splits["train"]:
        means.setdefault(record.label, []).append(np.asarray(Image.open(record.path), dtype=np.float32).mean())
    per_class = np.array([np.mean(v) for v in means.values()])
    spread_within = np.mean([np.std(v) for v in means.values()])
    assert per_class.std() < spread_within  # class means differ less than images within a class


def test_seeded_cached_and_worker_independent(tmp_path: Path) -> None:
    first = generate_demo(tmp_path / "a", num_classes=4, num_images=16, image_size=(64, 48), workers=1)
    second = generate_demo(tmp_path / "b", num_classes=4, num_images=16, image_size=(64, 48), workers=2)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 16 + 6
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    stamp = (first / "images.txt").stat().st_mtime_ns
    assert generate_demo(tmp_path / "a", num_classes=4, num_images=16, image_size=(64, 48)) == first
    assert (first / "images.txt").stat().st_mtime_ns == stamp  # cached, not regenerated
    third = generate_demo(tmp_path / "c", num_classes=4, num_images=16, image_size=(64, 48), seed=1)
    assert (third / "images.txt").read_bytes() == (first / "images.txt").read_bytes()
    image = "images/001.Vertical_Grating/Vertical_Grating_0001.jpg"
    assert (third / image).read_bytes() != (first / image).read_bytes()


def test_a_horizontal_flip_turns_mirror_classes_into_each_other() -> None:
    """Why the demos train without flips (jobs/_common.DEMO_CLASS_HFLIP): the flipped texture of one
    class has the spectrum of another class, so a flip would hand that class's label to the other."""
    names = [name for name, _ in TEXTURES]
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)

    def peak(texture, flip: bool) -> tuple[int, int]:
        image = texture(x, y, 2 * np.pi / 2.1, np.random.default_rng(0))
        spectrum = np.abs(np.fft.fft2(image[:, ::-1] if flip else image))
        spectrum[0, 0] = 0
        fy, fx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
        return min((fy, fx), ((-fy) % 64, (-fx) % 64))  # a real image's spectrum is symmetric

    textures = dict(TEXTURES)
    for a, b in [("Diagonal_Grating", "Antidiagonal_Grating"), ("Steep_Grating", "Steep_Grating_Mirrored")]:
        assert names.index(a) < 10 and names.index(b) < 10  # both in the 10-class demos
        assert peak(textures[a], flip=False) != peak(textures[b], flip=False)
        assert peak(textures[a], flip=True) == peak(textures[b], flip=False)
