"""Benchmark 8: activation memory per image of the recipe's training step, by what is recomputed.

Swin-L + learned resizer at 768 → 384 in bf16 (the model cast to bf16, as DeepSpeed's bf16 mode runs it),
forward and backward of one batch. Torch's `MemTracker` follows every tensor storage the step creates and
frees, under `FakeTensorMode`: shapes, dtypes and lifetimes are real, the arithmetic is skipped, so the
full-size model is measured on a CPU, in about half a minute per setting. Peaks at two batch sizes give the cost of one more image
(the slope), which is what decides the largest batch that fits; the intercept is the batch-independent
part (parameters, gradients, workspaces).

Fake and real tensors give the same peaks (tests/bench/test_activation_memory.py checks it on a small model).
The kernels measured are the CPU's: a GPU's kernels save a few different tensors (on one H100, the recipe's
backbone-only checkpointing measured 319 MiB per image in `bench/results/train_step_h100_batch_scaling.json`,
against 210 MiB here), so the ratios carry over better than the absolute figures.

The last row is the price: the step time with the resizer recomputed against kept, on real arithmetic.

    python bench/bench_activation_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import Row  # noqa: E402

MIB = 2**20


def step_peak_bytes(model: nn.Module, batch: int, input_size: int, num_outputs: int, *, fake: bool = True) -> int:
    """Peak bytes of every tensor alive during one forward and backward of `batch` uint8 images.

    Parameters count (they are alive) but are not created again: under `fake`, the model's real
    parameters meet fake inputs, and everything the step computes is fake."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

    model.zero_grad(set_to_none=True)
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
        pixels = torch.randint(0, 256, (batch, 3, input_size, input_size), dtype=torch.uint8)
        labels = torch.randint(0, num_outputs, (batch,))
        tracker = MemTracker()
        tracker.track_external(model, pixels)
        with tracker:
            nn.functional.cross_entropy(model(pixels).float(), labels).backward()
        peak = tracker.get_tracker_snapshot("peak")
    model.zero_grad(set_to_none=True)
    return int(sum(per_device[_TOTAL_KEY] for per_device in peak.values()))


def set_inplace(module: nn.Module, inplace: bool) -> None:
    for m in module.modules():
        if isinstance(m, nn.LeakyReLU):
            m.inplace = inplace


def variants(model: Any) -> dict[str, Any]:
    """Name -> a function that puts `model` (with its learned resizer in place) into that variant; each
    sets every switch it depends on, and all of them keep the learned resizer they were made with."""
    from pipeline.resizer import FixedResizer

    learned = model.resizer
    bilinear = FixedResizer(learned.output_size, "bilinear")

    def setting(resizer: nn.Module, inplace: bool, backbone: bool, whole: bool) -> Any:
        def apply() -> None:
            model.resizer = resizer
            set_inplace(learned, inplace)
            model.backbone.set_grad_checkpointing(backbone)
            model.grad_checkpointing = whole  # the resizer's recomputation; the backbone's is set above
        return apply

    return {
        "no checkpointing, out-of-place activations": setting(learned, False, False, False),
        "no checkpointing": setting(learned, True, False, False),
        "backbone checkpointed, out-of-place activations": setting(learned, False, True, False),
        "backbone checkpointed": setting(learned, True, True, False),
        "resizer and backbone checkpointed": setting(learned, True, True, True),
        "bilinear, backbone checkpointed": setting(bilinear, True, True, True),
    }


def build(quick: bool) -> tuple[Any, int, int, str]:
    from pipeline.config import ModelConfig, ResizerConfig
    from pipeline.model import build_model

    if quick:  # a small Swin at the recipe's 2x ratio: seconds, same code
        cfg = ModelConfig(backbone="swin_tiny_patch4_window7_224", pretrained=False, img_size=192,
                          backbone_kwargs={"window_size": 6})
        input_size, label = 384, "Swin-T + learned 384→192 (quick)"
    else:
        cfg = ModelConfig(backbone="swin_large_patch4_window12_384", pretrained=False)
        input_size, label = 768, "Swin-L + learned 768→384"
    torch.manual_seed(0)
    model = build_model(cfg, ResizerConfig(kind="learned"), num_outputs=200).to(torch.bfloat16).train()
    return model, input_size, 200, label


def measure(model: Any, input_size: int, num_outputs: int, batches: tuple[int, int], *, fake: bool = True
            ) -> dict[str, dict[str, float]]:
    out, settings = {}, variants(model)
    for name, apply in settings.items():
        apply()
        started = time.perf_counter()
        small, large = (step_peak_bytes(model, b, input_size, num_outputs, fake=fake) for b in batches)
        per_image = (large - small) / (batches[1] - batches[0])
        out[name] = {"per_image_mib": per_image / MIB, "fixed_mib": (small - batches[0] * per_image) / MIB,
                     "peaks_mib": [small / MIB, large / MIB], "seconds": time.perf_counter() - started}
        print(f"  {name:<48} {per_image / MIB:7.1f} MiB per image + {out[name]['fixed_mib']:7.1f} MiB "
              f"({out[name]['seconds']:.0f} s)", flush=True)
    settings["resizer and backbone checkpointed"]()  # as model.grad_checkpointing builds it
    return out


def recompute_time(quick: bool, steps: int = 6) -> dict[str, float]:
    """Median step time (forward and backward, real arithmetic) with the resizer recomputed and kept, the
    backbone checkpointed in both, steps alternated: the time the memory costs. ResNet-50 at 448 → 224 in
    fp32 on the CPU (benchmark 3's setting); `quick`: ResNet-18 at 224 → 112."""
    import statistics

    from pipeline.config import ModelConfig, ResizerConfig
    from pipeline.model import build_model

    backbone, size, batch = ("resnet18", 112, 2) if quick else ("resnet50", 224, 4)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, pretrained=False, img_size=size, grad_checkpointing=True),
                        ResizerConfig(kind="learned"), num_outputs=200).train()
    pixels = torch.randint(0, 256, (batch, 3, 2 * size, 2 * size), dtype=torch.uint8)
    labels = torch.randint(0, 200, (batch,))
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(2 * (steps + 1)):
        recompute = i % 2 == 0
        model.grad_checkpointing = recompute  # the backbone stays checkpointed
        started = time.perf_counter()
        nn.functional.cross_entropy(model(pixels), labels).backward()
        model.zero_grad(set_to_none=True)
        if i >= 2:  # one warm-up step each
            times[recompute].append(time.perf_counter() - started)
    model.grad_checkpointing = True
    return {"setting": f"{backbone} {2 * size}→{size}, CPU fp32, batch {batch}",
            "recomputed_ms": 1000 * statistics.median(times[True]), "kept_ms": 1000 * statistics.median(times[False])}


def rows(per_image_mib: dict[str, float], label: str) -> list[Row]:
    """The table's rows from the per-image figures of `measure`."""
    per = per_image_mib
    name = f"8 activation memory, {label}, bf16"
    bilinear = per["bilinear, backbone checkpointed"]
    both, backbone, off = per["resizer and backbone checkpointed"], per["backbone checkpointed"], per["no checkpointing"]
    out_of_place = per["no checkpointing, out-of-place activations"]
    return [
        Row(f"{name}, model.grad_checkpointing",
            f"resizer and backbone recomputed: {both:.0f} MiB/image (bilinear's: {bilinear:.0f})",
            f"backbone only: {backbone:.0f} MiB/image", both / backbone, "< 1x", both < backbone),
        Row(f"{name}, model.grad_checkpointing", f"on: {both:.0f} MiB/image", f"off: {off:.0f} MiB/image",
            both / off, "report only", None),
        Row(f"{name}, resizer activations in place", f"no checkpointing: {off:.0f} MiB/image",
            f"out of place: {out_of_place:.0f} MiB/image", off / out_of_place, "< 1x", off < out_of_place),
    ]


def run(*, quick: bool = False, batches: tuple[int, int] = (1, 3)) -> dict[str, Any]:
    model, input_size, num_outputs, label = build(quick)
    print(f"activation memory, {label}, bf16, batches {batches[0]} and {batches[1]} (fake tensors):")
    figures = measure(model, input_size, num_outputs, batches)
    del model
    table = rows({name: f["per_image_mib"] for name, f in figures.items()}, label)
    timing = recompute_time(quick)
    table.append(Row(f"8 activation memory, its time: {timing['setting']}, backbone checkpointed, steps alternated",
                     f"resizer recomputed {timing['recomputed_ms']:.0f} ms", f"kept {timing['kept_ms']:.0f} ms",
                     timing["recomputed_ms"] / timing["kept_ms"], "report only", None))
    for r in table:
        print(f"{r.benchmark}: {r.figure} vs {r.baseline} = {r.ratio:.2f}x")
    return {"figures": {"model": label, "input_size": input_size, "batches": list(batches), "precision": "bf16",
                        "method": "torch MemTracker under FakeTensorMode, CPU kernels", "variants": figures,
                        "recompute_time": timing},
            "rows": [r.to_dict() for r in table]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small Swin at 384 → 192")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick)["rows"], indent=2))
