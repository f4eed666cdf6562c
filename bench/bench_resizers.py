"""Training-step cost of the resizer families at 768 → 384: MULLER and the learned CNN against bilinear.

All three engines are built by `pipeline.train.setup_model_and_engine` (the code the Ray Train workers run) in
one process and step in turn (`bench_train_step.interleaved_step_times`), so load from other processes hits
them alike. The backbone is a ResNet-18 at 384 (a Swin-L step on 2 CPU cores takes minutes); the resizer's
share of the step is therefore larger than behind Swin-L, which is what this benchmark is about. Forward FLOPs
come from torch's FlopCounterMode (it counts convolutions and matmuls, not the bilinear resizes).

    python bench/bench_resizers.py            # prints the table; `python -m bench --only resizers` adds the rows
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, ResizerConfig  # noqa: E402

KINDS = ("learned", "muller", "bilinear")


def configs(batch_size: int = 2) -> list[JobConfig]:
    """The CNN (n=16, r=1), MULLER (L=2) and bilinear, 768 → 384, in front of the same ResNet-18, fp32 ZeRO-2."""
    base = JobConfig(
        resizer=ResizerConfig(kind="learned"),
        model=ModelConfig(backbone="resnet18", pretrained=False, img_size=384),
        data=DataConfig(crop_size=768, resize_size=None, batch_size=batch_size),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
    )
    return [dataclasses.replace(base, resizer=dataclasses.replace(base.resizer, kind=kind)) for kind in KINDS]


def run(*, quick: bool = False) -> dict[str, Any]:
    from bench.bench_train_step import forward_flops, interleaved_step_times
    from bench.common import Row

    warmup, steps = (1, 2) if quick else (1, 6)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfgs = configs()
    seconds = dict(zip(KINDS, interleaved_step_times(cfgs, warmup=warmup, steps=steps)))
    gflops = {kind: forward_flops(cfg) / 1e9 for kind, cfg in zip(KINDS, cfgs)}
    setting = f"768→384, resnet18, CPU fp32, batch {cfgs[0].data.batch_size}"
    print(f"resizer families, {setting}: step " + ", ".join(f"{k} {seconds[k] * 1000:.0f} ms" for k in KINDS)
          + "; forward " + ", ".join(f"{k} {gflops[k]:.2f}" for k in KINDS) + " GFLOPs")
    rows = []
    for kind in ("muller", "learned"):
        ratio = seconds[kind] / seconds["bilinear"]
        rows.append(Row(
            f"6 resizer families, {kind} vs bilinear, {setting}",
            f"{kind} step {seconds[kind] * 1000:.0f} ms ({gflops[kind]:.2f} GFLOPs forward)",
            f"bilinear {seconds['bilinear'] * 1000:.0f} ms ({gflops['bilinear']:.2f} GFLOPs)",
            ratio, "report only", None,
        ))
    figures = {"setting": setting, "warmup": warmup, "steps": steps,
               "step_ms": {k: v * 1000 for k, v in seconds.items()}, "forward_gflops": gflops,
               "time_ratio_to_bilinear": {k: seconds[k] / seconds["bilinear"] for k in KINDS},
               "muller_vs_learned": seconds["muller"] / seconds["learned"]}
    return {"figures": figures, "rows": [r.to_dict() for r in rows]}


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for row in out["rows"]:
        print(f"{row['benchmark']}: {row['figure']} vs {row['baseline']} = {row['ratio']:.3f}x")
