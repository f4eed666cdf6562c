"""A ZeRO checkpoint resumes on another number of workers (an elastic run after losing or regaining a node).

Real DeepSpeed on CPU, ranks as processes in a gloo group (what Ray Train sets up on its workers): for
each ZeRO stage in fp32, and for the recipe's bf16 at stages 2 and 3, 2 workers train and save; 1 worker
resumes through the universal conversion and saves; 2 workers resume that. The next optimizer step after
every resume gives the weights, Adam and loss of the uninterrupted run: samples per step are kept by
scaling the accumulation. (fp16 is not covered: DeepSpeed's CPU accelerator refuses it.)
"""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig, RunConfig
from pipeline.train import accumulation, describe_accumulation

# (ZeRO stage, precision): every stage in fp32; the recipe (ZeRO-2) and its ZeRO-3 variant in bf16
CASES = ((1, "fp32"), (2, "fp32"), (3, "fp32"), (2, "bf16"), (3, "bf16"))
BATCH = 2


def job(stage: int, precision: str) -> JobConfig:
    """Run by 2 workers (run.num_workers), or elastically by 1."""
    return JobConfig(
        resizer=ResizerConfig(num_filters=4, zero_init_last=False),
        model=ModelConfig(
            backbone="swin_tiny_patch4_window7_224", pretrained=False, img_size=16, drop_path_rate=0.0,
            backbone_kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2},
        ),
        data=DataConfig(resize_size=None, crop_size=32, batch_size=BATCH),
        optim=OptimConfig(lr=1e-2, resizer_lr=3e-3, weight_decay=0.05, epochs=4, warmup_epochs=0.0),
        deepspeed=DeepSpeedConfig(zero_stage=stage, precision=precision),
        run=RunConfig(num_workers=2, min_workers=1),
    )


def micro_batch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `index`-th micro-batch of the run's data, the same whichever worker draws it."""
    generator = torch.Generator().manual_seed(index)
    pixels = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return pixels, torch.randint(0, 3, (BATCH,), generator=generator)


def global_step(engine, rank: int, world_size: int, step: int) -> float:
    """One optimizer step over the 2 micro-batches of global step `step`, split over the workers;
    returns the mean loss of those micro-batches (the run's loss at that step)."""
    per_worker = 2 // world_size
    losses = []
    for k in range(per_worker):
        pixels, labels = micro_batch(2 * step + rank * per_worker + k)
        loss = torch.nn.functional.cross_entropy(engine(pixels).float(), labels)
        engine.backward(loss)
        engine.step()
        losses.append(loss.detach())
    total = torch.stack(losses).sum()
    torch.distributed.all_reduce(total)
    return float(total) / 2


def state_of(engine) -> dict[str, torch.Tensor]:
    """fp32 master weights and buffers, in full (collective). Adam's moments and the schedule show in
    the weights the next step lands on."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, param in engine.module.named_parameters():
        out[f"{name}:fp32"] = safe_get_full_fp32_param(param).detach().clone()
        if engine.zero_optimization_stage() < 3:
            out[f"{name}:module"] = param.detach().clone()
    for name, buffer in engine.module.named_buffers():
        out[f"{name}:buffer"] = buffer.detach().clone()
    return out


SOURCE = {"resume_on_1": "save", "resume_on_2": "resume_on_1"}  # the checkpoint each phase resumes


def _rank(rank: int, world_size: int, port: int, phase: str, root: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    from pipeline.checkpoint import load_checkpoint, make_universal, needs_universal, save_checkpoint, write_meta
    from pipeline.train import setup_model_and_engine

    for stage, precision in CASES:
        cfg = job(stage, precision)
        case = f"stage{stage}_{precision}"
        source = Path(root) / case / SOURCE.get(phase, "")
        universal = phase != "save" and needs_universal(str(source), world_size)
        if universal and rank == 0:
            make_universal(str(source))
        torch.distributed.barrier()
        torch.manual_seed(0)
        engine = setup_model_and_engine(
            cfg, num_outputs=3, world_size=world_size, warmup_steps=0, total_steps=8, load_universal=universal
        )
        step = 0
        if phase == "save":
            for step in range(2):
                global_step(engine, rank, world_size, step)
            step = 2
        else:
            client = load_checkpoint(engine, str(source), universal=universal)
            step = client["step"]
        # every phase saves what it has, for the next phase to resume on another worker count
        target = Path(root) / case / phase
        save_checkpoint(engine, str(target), client_state={"epoch": 1, "step": step, "best": 0.0}, weights_meta={})
        if rank == 0:
            write_meta(str(target), {"epoch": 1, "step": step, "world_size": world_size, "zero_stage": stage})
        loaded = state_of(engine)
        loss = global_step(engine, rank, world_size, step)  # the step after the (re)start
        after = state_of(engine)
        if rank == 0:
            torch.save(
                {"step": step, "lr": engine.get_lr()[0], "loss": loss, "loaded": loaded, "after": after, "universal": universal},
                Path(root) / f"{phase}_{case}.pt",
            )
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _run(phase: str, world_size: int, root: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(world_size, port, phase, str(root)), nprocs=world_size, join=True)


def test_accumulation_keeps_the_samples_per_step_of_the_configured_workers():
    cfg = JobConfig(optim=OptimConfig(grad_accum=2), run=RunConfig(num_workers=4, min_workers=1))
    assert [accumulation(cfg, w) for w in (4, 2, 1, 3)] == [2, 4, 8, 3]
    assert describe_accumulation(cfg, 4) is None
    assert "keeps 64 samples per optimizer step" in describe_accumulation(cfg, 2)  # batch 8 x 4 x 2
    assert "72 samples per optimizer step instead of 64" in describe_accumulation(cfg, 3)


@pytest.mark.slow
def test_zero_checkpoints_resume_on_fewer_and_more_workers_with_the_same_next_step(tmp_path):
    _run("save", 2, tmp_path)
    _run("resume_on_1", 1, tmp_path)
    _run("resume_on_2", 2, tmp_path)
    for stage, precision in CASES:
        case = f"stage{stage}_{precision}"
        base, on_1, on_2 = (torch.load(tmp_path / f"{phase}_{case}.pt") for phase in ("save", "resume_on_1", "resume_on_2"))
        assert on_1["universal"] and on_2["universal"]  # 2 -> 1 and 1 -> 2 went through the conversion
        assert base["step"] == on_1["step"] == on_2["step"] == 2
        modules = {value.dtype for name, value in base["loaded"].items() if name.endswith(":module")}
        assert modules == ({torch.bfloat16 if precision == "bf16" else torch.float32} if stage < 3 else set()), case
        for resumed in (on_1, on_2):
            # the resume restored every weight and buffer the uninterrupted run had ...
            for name, value in base["loaded"].items():
                torch.testing.assert_close(resumed["loaded"][name], value, rtol=0, atol=0, msg=f"{case} {name}")
            # ... and the next step sees the same loss and lands on the same weights (sums in another
            # order): Adam's moments, its step count and the schedule were restored too
            assert resumed["loss"] == pytest.approx(base["loss"], rel=1e-5), case
            assert resumed["lr"] == pytest.approx(base["lr"]), case
            for name, value in base["after"].items():
                if not name.endswith(":buffer"):  # batch-norm statistics see 1 or 2 micro-batches per worker
                    torch.testing.assert_close(resumed["after"][name], value, rtol=1e-4, atol=1e-6, msg=f"{case} {name}")
    for stage, precision in CASES:  # converted once, beside the shards, for the resumes that follow
        assert (tmp_path / f"stage{stage}_{precision}" / "save" / "ds_universal").is_dir()
        assert (tmp_path / f"stage{stage}_{precision}" / "resume_on_1" / "ds_universal").is_dir()
