"""Benchmark 2: decode + resize + crop at the recipe's sizes, before and after the known speed-ups.

One process, one thread, images/s, variants interleaved and best of a few rounds, over JPEGs read from
data_prep shards of demo images:

- pil: Pillow full decode + Pillow bilinear resize + crop (`pipeline.data` before it moved to torchvision);
- pil_draft: Pillow with `draft()`, which lets libjpeg decode at 1/2, 1/4 or 1/8 scale; it only helps when the
  target is at most half the source, so it is measured where that holds (1500 px → 256);
- torchvision: `torchvision.io.decode_jpeg` (libjpeg-turbo) + `transforms.v2` resize: today's `decode_batch`;
- pre-resized: the same, over shards written by `data_prep --max-side 1020` from 1500-px sources;
- gpu (with a CUDA GPU): `data.decode=gpu`'s worker side, `pipeline.decode.decode_on_device` on batches of 32
  (nvJPEG + resize + crop), against the CPU path on one core: how many decode cores one GPU stands in for.

    python bench/bench_decode.py [--quick]
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import Row, best_of, make_shards, timed_rate  # noqa: E402


def read_jpegs(urls: list[str]) -> list[bytes]:
    from pipeline.decode import iter_tar_samples

    out = []
    for url in urls:
        with open(url, "rb") as f:
            out += [row["jpg"] for row in iter_tar_samples(f, url) if not row["error"]]
    return out


def pil_transform(jpg: bytes, resize_size: int, crop_size: int, *, draft: bool = False) -> np.ndarray:
    """Pillow decode → resize → random crop: the decode path before torchvision."""
    from PIL import Image

    image = Image.open(io.BytesIO(jpg))
    if draft:
        image.draft("RGB", (resize_size, resize_size))  # decode at the smallest 1/2^k scale >= the target
    image = image.convert("RGB")
    image = image.resize((resize_size, resize_size), Image.BILINEAR)
    top = left = (resize_size - crop_size) // 2
    return np.ascontiguousarray(np.asarray(image)[top : top + crop_size, left : left + crop_size].transpose(2, 0, 1))


def ours_transform(jpg: bytes, resize_size: int, crop_size: int) -> np.ndarray:
    """What `pipeline.data.decode_batch` runs per image now."""
    from pipeline.decode import _decode, transform_image

    return transform_image(_decode(jpg), resize_size=resize_size, crop_size=crop_size, train=True, hflip=True,
                           rng=np.random.default_rng(0))


def gpu_decode_rate(
    jpegs: list[bytes], resize_size: int, crop_size: int, *, batch_size: int = 32, device: str = "cuda"
) -> Callable[[], float]:
    """`data.decode=gpu` on the Train worker: the read task's `sample_crops` done beforehand, as in Ray Data."""
    import torch

    from pipeline.decode import column, decode_on_device, sample_crops

    rows = {"key": column([str(i) for i in range(len(jpegs))]), "jpg": column(jpegs),
            "label": np.zeros(len(jpegs), np.int64), "meta": column(["{}"] * len(jpegs)), "error": column([""] * len(jpegs))}
    shipped = [sample_crops({name: column[start : start + batch_size] for name, column in rows.items()},
                            resize_size=resize_size, crop_size=crop_size, train=True, task=None, seed=0)
               for start in range(0, len(jpegs), batch_size)]

    def count() -> int:
        decoded = sum(int(decode_on_device(batch, crop_size=crop_size, device=device)["valid"].sum()) for batch in shipped)
        if device == "cuda":
            torch.cuda.synchronize()
        return decoded

    return lambda: timed_rate(count)


def rate(fn: Callable[[bytes], Any], jpegs: list[bytes]) -> Callable[[], float]:
    def count() -> int:
        for jpg in jpegs:
            fn(jpg)
        return len(jpegs)

    return lambda: timed_rate(count)


def run(workdir: Path, *, quick: bool = False) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # per core, as in a decode worker
    num_images, repeats = (20, 2) if quick else (60, 3)
    cub = read_jpegs(make_shards(workdir, num_images=num_images, image_size=(500, 375)).urls)
    big = make_shards(workdir, num_images=num_images, image_size=(1500, 1125))
    big_jpegs = read_jpegs(big.urls)
    pre_resized = read_jpegs(make_shards(workdir, num_images=num_images, image_size=(1500, 1125), max_side=1020).urls)
    figures: dict[str, Any] = {"num_images": num_images, "repeats": repeats, "threads": 1,
                               "mean_jpeg_kib": {"500x375": round(np.mean([len(j) for j in cub]) / 1024, 1),
                                                 "1500x1125": round(np.mean([len(j) for j in big_jpegs]) / 1024, 1),
                                                 "1500x1125 pre-resized to 1020": round(np.mean([len(j) for j in pre_resized]) / 1024, 1)}}
    rows = []

    def report(setting: str, rates: dict[str, float], pairs: list[tuple[str, str, str]]) -> None:
        figures[setting] = {name: round(r, 1) for name, r in rates.items()}
        print(f"decode, {setting} (img/s, one core, best of {repeats}): " + ", ".join(f"{n} {r:.1f}" for n, r in rates.items()))
        for after, before, what in pairs:
            ratio = rates[after] / rates[before]
            print(f"  {what}: {ratio:.2f}x")
            rows.append(Row(f"2 decode, {setting}", f"{after} {rates[after]:.1f} img/s", f"{before} {rates[before]:.1f} img/s",
                            ratio, "speed-up > 1x", ratio > 1.0))

    rates = best_of(repeats, {"pil": rate(lambda j: pil_transform(j, 1020, 768), cub),
                              "torchvision": rate(lambda j: ours_transform(j, 1020, 768), cub)})
    report("500x375 → 1020 → crop 768", rates, [("torchvision", "pil", "torchvision / Pillow")])

    rates = best_of(repeats, {"pil": rate(lambda j: pil_transform(j, 1020, 768), big_jpegs),
                              "torchvision": rate(lambda j: ours_transform(j, 1020, 768), big_jpegs),
                              "pre-resized+torchvision": rate(lambda j: ours_transform(j, 1020, 768), pre_resized)})
    report("1500x1125 → 1020 → crop 768", rates, [("torchvision", "pil", "torchvision / Pillow"),
                                                 ("pre-resized+torchvision", "torchvision", "pre-resized shards / original"),
                                                 ("pre-resized+torchvision", "pil", "both / Pillow on originals")])

    rates = best_of(repeats, {"pil": rate(lambda j: pil_transform(j, 256, 224), big_jpegs),
                              "pil_draft": rate(lambda j: pil_transform(j, 256, 224, draft=True), big_jpegs),
                              "torchvision": rate(lambda j: ours_transform(j, 256, 224), big_jpegs)})
    report("1500x1125 → 256 → crop 224", rates, [("pil_draft", "pil", "draft() / full decode"),
                                                ("torchvision", "pil", "torchvision / Pillow")])
    rows.append(gpu_row(cub, repeats, figures))
    return {"figures": figures, "rows": [r.to_dict() for r in rows]}


GPU_IMAGES = 256


def gpu_row(jpegs: list[bytes], repeats: int, figures: dict[str, Any]) -> Row:
    """data.decode=gpu at the recipe's sizes against the CPU path per core; not measured without a GPU."""
    import torch

    setting = "2 decode, 500x375 → 1020 → crop 768, data.decode=gpu (batches of 32)"
    if not torch.cuda.is_available():
        print("decode on the GPU: not measured (no CUDA GPU here)")
        return Row(setting, "not measured (no GPU)", "CPU path, one core", None, "report only", None)
    jpegs = (jpegs * -(-GPU_IMAGES // len(jpegs)))[:GPU_IMAGES]  # 8 batches: a rate, not a launch
    gpu_decode_rate(jpegs, 1020, 768)()  # warm-up: CUDA context, nvJPEG handles
    rates = best_of(repeats, {"gpu": gpu_decode_rate(jpegs, 1020, 768),
                              "cpu": rate(lambda j: ours_transform(j, 1020, 768), jpegs)})
    name = torch.cuda.get_device_name(0)
    figures["gpu_decode"] = {"device": name, "images": len(jpegs), **{k: round(v, 1) for k, v in rates.items()}}
    print(f"decode on the GPU ({name}): {rates['gpu']:.1f} img/s; CPU path {rates['cpu']:.1f} img/s per core")
    return Row(setting, f"{name} {rates['gpu']:.1f} img/s", f"CPU path {rates['cpu']:.1f} img/s per core",
               rates["gpu"] / rates["cpu"], "report only", None)


def gpu_only(num_images: int = 60, repeats: int = 3) -> dict[str, Any]:
    """The GPU row alone, over fresh CUB-size demo shards (`bench/device_check.sh decode`)."""
    import tempfile

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        jpegs = read_jpegs(make_shards(Path(tmp), num_images=num_images, image_size=(500, 375)).urls)
        row = gpu_row(jpegs, repeats, figures)
    return {"row": row.to_dict(), **figures}


if __name__ == "__main__":
    from bench.common import script_main

    script_main(run, __doc__)
