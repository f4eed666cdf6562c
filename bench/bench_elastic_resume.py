"""Benchmark 9: what a resume on another worker count costs at Swin-L size, against a resume on the same count.

ZeRO shards load only into the worker count that wrote them. After a node goes (or comes back) an elastic
run resumes on another count: rank 0 first converts the checkpoint once to DeepSpeed's universal checkpoint
(`pipeline.checkpoint.make_universal`, in-process), then every rank loads that (`load_checkpoint(...,
universal=True)`). A resume on the same count loads each rank's own shard.

Real DeepSpeed on CPU, ranks as processes in a gloo group (as in tests/pipeline/test_elastic.py): the recipe's
model and engine (Swin-L at 384 behind the learned resizer, ZeRO-2, bf16, AdamW) trains one step on 2 ranks and
saves; 2 ranks load it as saved, then 1 rank converts and loads it. Each phase is timed from its first barrier
to its last, the engine's build excluded (a resume on any count builds one). Inputs are 384 px (the step only
fills Adam's state; the checkpoint's size does not depend on the input). Local disk; a checkpoint in a
bucket is downloaded first, on either path.

    python bench/bench_elastic_resume.py [--quick]     # ~2 min; --quick: a small Swin, seconds
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row  # noqa: E402

SWIN_L = {"backbone": "swin_large_patch4_window12_384"}
SMALL_SWIN = {
    "backbone": "swin_tiny_patch4_window7_224",
    "img_size": 32,
    "backbone_kwargs": {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4},
}
NUM_OUTPUTS = 200  # CUB's classes


def job(model: dict[str, Any]) -> Any:
    from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig, RunConfig

    crop = model.get("img_size") or 384
    return JobConfig(
        resizer=ResizerConfig(kind="learned"),
        model=ModelConfig(pretrained=False, **model),
        data=DataConfig(resize_size=None, crop_size=crop, batch_size=1),
        optim=OptimConfig(lr=5e-6, epochs=1, warmup_epochs=0.0),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="bf16"),
        run=RunConfig(num_workers=2, min_workers=1),
    )


def _rank(rank: int, world_size: int, port: int, phase: str, root: str, model: dict[str, Any]) -> None:
    """One rank of one phase: "save" (a step, then the checkpoint), "same" (load its own shard) or "other"
    (rank 0 converts, every rank loads the universal checkpoint). Rank 0 writes `<phase>.json`."""
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world_size))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    from pipeline.checkpoint import load_checkpoint, make_universal, needs_universal, save_checkpoint, write_meta
    from pipeline.train import setup_model_and_engine

    cfg = job(model)
    universal = phase == "other"
    assert universal == needs_universal(root, world_size)  # an empty folder ("save") needs none
    engine = setup_model_and_engine(cfg, num_outputs=NUM_OUTPUTS, world_size=world_size, warmup_steps=0,
                                    total_steps=10, load_universal=universal)
    figures: dict[str, Any] = {"world_size": world_size}
    torch.distributed.barrier()
    started = time.perf_counter()
    if phase == "save":
        crop = cfg.data.crop_size
        pixels = torch.randint(0, 256, (1, 3, crop, crop), dtype=torch.uint8, generator=torch.Generator().manual_seed(rank))
        engine.backward(engine(pixels).float().logsumexp(-1).mean())
        engine.step()
        torch.distributed.barrier()
        figures["step_s"] = time.perf_counter() - started
        started = time.perf_counter()
        save_checkpoint(engine, root, client_state={"epoch": 1, "step": 1, "best": 0.0}, weights_meta={})
        torch.distributed.barrier()
        figures["save_s"] = time.perf_counter() - started
        if rank == 0:
            write_meta(root, {"epoch": 1, "step": 1, "world_size": world_size, "zero_stage": 2})
    else:
        if universal and rank == 0:
            make_universal(root)
        torch.distributed.barrier()
        converted = time.perf_counter()
        if universal:
            figures["convert_s"] = converted - started
        client = load_checkpoint(engine, root, universal=universal)
        torch.distributed.barrier()
        figures["load_s"] = time.perf_counter() - converted
        figures["resume_s"] = time.perf_counter() - started
        figures["step"] = client["step"]
    if rank == 0:
        Path(root, f"{phase}.json").write_text(json.dumps(figures))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _phase(phase: str, world_size: int, root: Path, model: dict[str, Any]) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(world_size, port, phase, str(root), model), nprocs=world_size, join=True)
    return json.loads((root / f"{phase}.json").read_text())


def _size_gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30


def run(workdir: Path, *, quick: bool = False) -> dict[str, Any]:
    name, model = ("small Swin", SMALL_SWIN) if quick else ("Swin-L", SWIN_L)
    root = Path(workdir) / "elastic_resume"
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    saved = _phase("save", 2, root, model)
    same = _phase("same", 2, root, model)
    other = _phase("other", 1, root, model)
    shards, universal = _size_gib(root / "ds"), _size_gib(root / "ds_universal")
    figures = {"model": name, "save": saved, "same_count": same, "other_count": other,
               "zero_shards_gib": shards, "universal_gib": universal}
    print(f"{name} + learned resizer, ZeRO-2 bf16: step {saved['step_s']:.1f} s, save on 2 ranks {saved['save_s']:.1f} s "
          f"({shards:.2f} GiB of shards); resume on 2 (its own shards) {same['resume_s']:.1f} s; resume on 1: "
          f"convert {other['convert_s']:.1f} s ({universal:.2f} GiB) + load {other['load_s']:.1f} s")
    row = Row(
        f"9 elastic resume, {name} + learned, ZeRO-2 bf16, saved by 2 workers",
        f"on 1 worker: {other['resume_s']:.1f} s (convert {other['convert_s']:.1f} + load {other['load_s']:.1f})",
        f"on 2 workers, own shards: {same['resume_s']:.1f} s ({shards:.2f} GiB; saving took {saved['save_s']:.1f} s)",
        other["resume_s"] / same["resume_s"], "report only", None,
    )
    return {"figures": figures, "rows": [row.to_dict()]}


if __name__ == "__main__":
    from bench.common import script_main

    script_main(run, __doc__)
