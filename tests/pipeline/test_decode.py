"""`pipeline.decode`: shard rows to crops on a CPU or a GPU, without Ray (the GPU test runs on a machine with torch
alone: `pytest --noconftest tests/pipeline/test_decode.py`)."""

import io
import pickle
import subprocess
import sys
import tarfile
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.decode import (
    SAMPLED_COLUMNS,
    decode_batch,
    decode_on_device,
    iter_tar_samples,
    sample_crops,
    transform_image,
)
from pipeline.tasks import get_task

CLASSIFICATION = get_task("classification")


def _jpeg(width=60, height=40, color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _rows(samples):
    return {
        "key": np.array([s["key"] for s in samples], dtype=object),
        "jpg": np.array([s["jpg"] for s in samples], dtype=object),
        "label": np.array([s["label"] for s in samples]),
        "meta": np.array([s["meta"] for s in samples], dtype=object),
        "error": np.array([s["error"] for s in samples], dtype=object),
    }


def test_train_transform_crops_and_flips():
    image = Image.fromarray(np.arange(50 * 80 * 3, dtype=np.uint8).reshape(50, 80, 3))
    rng = np.random.default_rng(0)
    out = transform_image(image, resize_size=None, crop_size=32, train=True, hflip=True, rng=rng)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    source = np.asarray(image).transpose(2, 0, 1)
    # the crop is a window of the source, possibly mirrored
    found = any(
        np.array_equal(out, source[:, t : t + 32, l : l + 32]) or np.array_equal(out, source[:, t : t + 32, l : l + 32][:, :, ::-1])
        for t in range(50 - 31)
        for l in range(80 - 31)
    )
    assert found


def test_eval_transform_resizes_square_then_centre_crops():
    image = Image.new("RGB", (300, 100), (10, 20, 30))
    image.paste((250, 0, 0), (140, 40, 160, 60))  # a red square at the centre
    out = transform_image(image, resize_size=120, crop_size=100, train=False, hflip=True, rng=np.random.default_rng(0))
    assert out.shape == (3, 100, 100)
    assert out[0, 50, 50] > 200 and out[0, 5, 5] < 50  # centre kept, aspect not kept


def test_small_images_are_scaled_up_to_the_crop():
    out = transform_image(Image.new("RGB", (20, 30)), resize_size=None, crop_size=48, train=True, hflip=False, rng=np.random.default_rng(0))
    assert out.shape == (3, 48, 48)


def _mixed_batch():
    """Six photos of different sizes (one smaller than the crops below), as JPEG; then a truncated JPEG,
    a PNG behind .jpg, bytes that are no image, and a sample without a label."""
    rng = np.random.default_rng(1)
    encoded = []
    for i, (height, width) in enumerate([(40, 60), (75, 50), (20, 30), (64, 64), (90, 41), (33, 97)]):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(png, "PNG")
    encoded += [encoded[0][: len(encoded[0]) // 2], png.getvalue(), b"garbage", encoded[1]]
    labels = [i % 3 for i in range(len(encoded) - 1)] + [-1]
    return _rows([{"key": f"k{i}", "jpg": data, "label": label, "meta": "{}", "error": ""}
                  for i, (data, label) in enumerate(zip(encoded, labels))])


@pytest.mark.parametrize("train,resize_size", [(True, None), (True, 72), (False, 72), (False, None)])
def test_gpu_decode_path_cuts_the_cpu_paths_crops_from_the_shipped_bytes(train, resize_size):
    """data.decode=gpu run on a CPU: the read task ships each row's JPEG bytes and crop (`sample_crops`),
    the worker decodes them in one batched call (`decode_on_device`, which the CPU path also runs in the
    read task): the pixels, validity and reasons are the CPU path's for the same seed, a truncated JPEG
    found on the worker as on the CPU, a bad JPEG not failing the rest of the batch."""
    batch = _mixed_batch()
    options = dict(resize_size=resize_size, crop_size=32, train=train, task=CLASSIFICATION, seed=3)
    cpu = decode_batch(batch, **options)
    shipped = sample_crops(batch, **options)
    assert shipped["valid"].tolist() == [True] * 8 + [False, False]  # no image, no label: flagged before decoding
    assert shipped["jpg"][8] == b"" and "no class label" in shipped["error"][9]
    worker = decode_on_device(shipped, crop_size=32, device="cpu")
    assert not set(SAMPLED_COLUMNS) & set(worker) and worker["pixels"].dtype == torch.uint8
    assert worker["valid"].tolist() == cpu["valid"].tolist() == [True] * 6 + [False, True, False, False]
    assert list(worker["error"]) == list(cpu["error"]) and "undecodable image" in cpu["error"][6]
    assert torch.equal(worker["pixels"], torch.from_numpy(cpu["pixels"]))
    assert worker["label"].tolist() == cpu["label"].tolist()
    assert cpu["pixels"][:6].reshape(6, -1).std(axis=1).min() > 20  # real crops, not zeros


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on the device machine)")
def test_gpu_decode_on_a_gpu_is_the_cpu_path_within_rounding():
    batch = _mixed_batch()
    options = dict(resize_size=72, crop_size=32, train=True, task=CLASSIFICATION, seed=3)
    cpu = decode_batch(batch, **options)
    gpu = decode_on_device(sample_crops(batch, **options), crop_size=32, device="cuda")
    assert gpu["pixels"].is_cuda and gpu["valid"].tolist() == cpu["valid"].tolist()
    diff = (gpu["pixels"].cpu().int() - torch.from_numpy(cpu["pixels"]).int()).abs().float()
    assert diff.mean() < 1.5 and diff.quantile(0.99) <= 8  # nvJPEG's IDCT and float resize round differently


def test_unpickling_the_read_transform_does_not_load_torch():
    """Ray Data's coordinators and Train's dataset manager only unpickle the transform (its task and
    options) and never decode: they must not pay for loading torch (~2 CPU-s and its memory each)."""
    transform = partial(decode_batch, resize_size=None, crop_size=32, train=True, task=get_task("quality"), hflip=True)
    check = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", check], input=pickle.dumps(transform), capture_output=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr.decode()[-2000:]
    assert loaded.stdout.decode().strip() == "[]"


def test_decode_batch_flags_bad_images_and_keeps_going():
    good = _jpeg()
    truncated = good[: len(good) // 2]
    batch = _rows(
        [
            {"key": "a", "jpg": good, "label": 3, "meta": "{}", "error": ""},
            {"key": "b", "jpg": b"not a jpeg", "label": 1, "meta": "{}", "error": ""},
            {"key": "c", "jpg": truncated, "label": 2, "meta": "{}", "error": ""},
            {"key": "d", "jpg": b"", "label": -1, "meta": "{}", "error": "truncated tar"},
        ]
    )
    out = decode_batch(batch, resize_size=None, crop_size=32, train=False, task=CLASSIFICATION)
    assert out["valid"].tolist() == [True, False, False, False]
    assert out["pixels"].shape == (4, 3, 32, 32) and out["pixels"][0].max() > 150
    assert "undecodable" in out["error"][1] and "undecodable" in out["error"][2]
    assert out["error"][3] == "truncated tar" and out["label"].tolist() == [3, 1, 2, -1]


def test_an_image_over_the_pixel_limit_is_skipped_before_it_is_decoded():
    from PIL import Image as PILImage

    from pipeline.config import MAX_IMAGE_PIXELS

    assert MAX_IMAGE_PIXELS == PILImage.MAX_IMAGE_PIXELS  # the limit data_prep enforces
    batch = _rows([{"key": "big", "jpg": _jpeg(), "label": 0, "meta": "{}", "error": ""}])
    width, height = PILImage.open(io.BytesIO(batch["jpg"][0])).size
    out = decode_batch(batch, resize_size=None, crop_size=32, train=False, task=CLASSIFICATION, max_pixels=width * height - 1)
    assert out["valid"].tolist() == [False]
    assert out["error"][0] == f"image too large: {width} x {height} pixels, over data.max_pixels={width * height - 1}"
    assert decode_batch(batch, resize_size=None, crop_size=32, train=False, task=CLASSIFICATION)["valid"].tolist() == [True]


def test_truncated_tar_yields_its_samples_then_one_error_row(tmp_path):
    path = tmp_path / "train-000000.tar"
    _write_tar(path, [(f"k{i}", {"cls": b"1", "jpg": _jpeg(), "json": b"{}"}) for i in range(5)])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with open(path, "rb") as f:
        rows = list(iter_tar_samples(f, str(path)))
    good = [r for r in rows if not r["error"]]
    assert 1 <= len(good) < 5 and all(r["label"] == 1 for r in good)
    assert len(rows) == len(good) + 1 and "truncated or corrupt tar" in rows[-1]["error"]


def test_the_train_workers_decode_and_step_import_without_ray():
    """A GPU machine with torch and timm alone (no Ray, no WebDataset) can run the decode parity test and
    the train-step benchmark (`bench/device_check.sh`): `pipeline.decode` and `pipeline.train` import
    Ray only inside the functions that use it, and DeepSpeed inside the engine's setup."""
    check = ("import sys\n"
             "for name in ('ray', 'webdataset', 'deepspeed'): sys.modules[name] = None  # any import of them fails\n"
             "import pipeline.decode, pipeline.train, pipeline.model\n"
             "print('ok')")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
