"""Benchmark 7: seconds a training step waits per checkpoint, synchronous upload against asynchronous.

Real runs through `pipeline.launch.launch` on a local Ray (1 CPU worker, DeepSpeed ZeRO-2 fp32, 2 epochs,
a checkpoint every epoch), each with `run.checkpoint_upload=sync` and `=async`, side by side: the demo model
(a small Swin behind the learned resizer) and a ViT-B/16 (86M parameters: its ZeRO optimizer shard is over
1 GB). The loop prints how long training waited for each checkpoint ("training waited X s"): with `sync`
the local save plus the copy to `run.storage`; with `async` the local save only, the copy runs while
training goes on. Storage here is a local folder; a bucket makes the copy, and the gap, longer.

    python bench/bench_checkpoint.py [--quick]
"""

from __future__ import annotations

import contextlib
import io
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row, make_shards  # noqa: E402

MODELS = {
    "demo Swin": {
        "backbone": "swin_tiny_patch4_window7_224",
        "img_size": 32,
        "backbone_kwargs": {"embed_dim": 32, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4},
    },
    "ViT-B/16 (86M)": {"backbone": "vit_base_patch16_224", "img_size": 32, "backbone_kwargs": {}},
}
WAITED = re.compile(r"saved checkpoint of epoch \d+: training waited ([0-9.]+) s")


def job(shards: str, storage: str, model: dict[str, Any], upload: str) -> Any:
    from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig, RunConfig

    return JobConfig(
        resizer=ResizerConfig(num_filters=8),
        model=ModelConfig(pretrained=False, **model),
        data=DataConfig(path=shards, resize_size=None, crop_size=64, batch_size=4, shuffle_buffer=0),
        optim=OptimConfig(lr=1e-4, epochs=2, warmup_epochs=0.0),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
        run=RunConfig(name=f"ckpt_{upload}", storage=storage, num_workers=1, cpus_per_worker=2, log_every=0,
                      checkpoint_upload=upload, preemption_check_every=0),
    )


def waited_seconds(cfg: Any) -> tuple[list[float], int]:
    """The seconds training waited per checkpoint of one run, and the bytes of its ZeRO shards."""
    from pipeline.launch import launch

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = launch(cfg)
    waits = [float(m) for m in WAITED.findall(out.getvalue())]
    shards = Path(result.latest_checkpoint) / "ds"
    size = sum(f.stat().st_size for f in shards.rglob("*") if f.is_file())
    return waits, size


def run(workdir: Path, *, quick: bool = False) -> dict[str, Any]:
    import ray

    shards = make_shards(workdir, num_images=40, image_size=(96, 96), shard_size=10)
    data = str(Path(shards.urls[0]).parent)
    figures: dict[str, Any] = {}
    rows = []
    ray.shutdown()
    ray.init(num_cpus=8, log_to_driver=False)
    try:
        models = {"demo Swin": MODELS["demo Swin"]} if quick else MODELS
        for name, model in models.items():
            measured = {}
            for upload in ("sync", "async"):
                with tempfile.TemporaryDirectory(prefix="ckpt_bench_", dir=workdir) as storage:
                    waits, size = waited_seconds(job(data, storage, model, upload))
                measured[upload] = statistics.mean(waits)
                figures[f"{name} {upload}"] = {"waited_s": waits, "zero_shard_bytes": size}
                print(f"{name}, {upload} upload: training waited {waits} s per checkpoint; ZeRO shards {size / 2**30:.2f} GiB")
            ratio = measured["async"] / measured["sync"]
            rows.append(Row(
                f"7 checkpoint wait, {name}",
                f"async upload {measured['async']:.2f} s per checkpoint",
                f"sync {measured['sync']:.2f} s (ZeRO shards {figures[f'{name} sync']['zero_shard_bytes'] / 2**30:.2f} GiB)",
                ratio, "async < sync", ratio < 1.0,
            ).to_dict())
    finally:
        ray.shutdown()
    return {"figures": figures, "rows": rows}


if __name__ == "__main__":
    from bench.common import script_main

    script_main(run, __doc__)
