import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.checkpoint import load_weights, weights_only_engine
from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig, RunConfig
from pipeline.launch import launch
from pipeline.predict import predict
from pipeline.trained import load_trained
from pipeline.train import deepspeed_config, lr_factor, schedule, steps_per_epoch

TINY_MODEL = ModelConfig(
    backbone="swin_tiny_patch4_window7_224",
    pretrained=False,
    img_size=16,
    # two blocks in stage 1: the second is a shifted window with an attention-mask buffer (bf16 casts it)
    backbone_kwargs={"embed_dim": 16, "depths": [2, 1], "num_heads": [1, 2], "window_size": 2},
)


def tiny_job(data: str, storage: str, **run) -> JobConfig:
    return JobConfig(
        resizer=ResizerConfig(num_filters=8),
        model=TINY_MODEL,
        data=DataConfig(path=data, resize_size=None, crop_size=32, batch_size=4, shuffle_buffer=8),
        optim=OptimConfig(lr=1e-3, epochs=2, warmup_epochs=0.5),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
        run=RunConfig(**{"name": "tiny", "storage": storage, "num_workers": 2, "log_every": 0, **run}),
    )


def test_steps_per_epoch_follow_the_equal_split():
    assert steps_per_epoch(30, 2, 4, 1) == 3  # 15 rows per worker: 3 full micro-batches
    assert steps_per_epoch(100, 2, 4, 3) == 4  # 12 micro-batches, 4 accumulation windows
    with pytest.raises(ValueError, match="no optimizer step per epoch"):
        steps_per_epoch(6, 2, 4, 1)


def test_warmup_then_cosine():
    kw = dict(warmup_steps=10, total_steps=110, start_factor=0.01, min_factor=0.0)
    assert lr_factor(0, **kw) == pytest.approx(0.01)
    assert lr_factor(5, **kw) == pytest.approx(0.505)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.5)
    assert lr_factor(110, **kw) == pytest.approx(0.0, abs=1e-12)
    assert schedule(OptimConfig(epochs=100, warmup_epochs=5), 7) == (35, 700)


def test_deepspeed_config_is_derived_from_the_typed_config():
    cfg = JobConfig(
        data=DataConfig(batch_size=8),
        optim=OptimConfig(grad_accum=4, grad_clip=5.0),
        deepspeed=DeepSpeedConfig(zero_stage=3, precision="fp16", initial_scale_power=12),
        run=RunConfig(num_workers=8),
    )
    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_batch_size"] == 8 * 4 * 8 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 5.0
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert ds["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 12} and not ds["bf16"]["enabled"]


@pytest.mark.slow
@pytest.mark.ray
# ZeRO-1 runs data.decode=gpu on the CPU: Ray Data ships JPEG bytes and crops, the workers decode them in
# batches; the corrupt samples are found there, counted the same, and the eval crops are the CPU path's.
# ZeRO-3 recomputes the model in backward (model.grad_checkpointing): the resizer's partitioned parameters are
# gathered again for its second forward.
@pytest.mark.parametrize("stage,precision,decode", [(1, "fp32", "gpu"), (2, "fp32", "cpu"), (3, "bf16", "cpu")])
def test_two_workers_train_and_evaluate_under_zero(stage, precision, decode, tiny_shards, tmp_path, ray_local):
    cfg = tiny_job(tiny_shards["path"], str(tmp_path / "runs"), name=f"zero{stage}")
    cfg = JobConfig(**{**cfg.__dict__, "deepspeed": DeepSpeedConfig(zero_stage=stage, precision=precision),
                       "data": dataclasses.replace(cfg.data, decode=decode),
                       "model": dataclasses.replace(cfg.model, grad_checkpointing=stage == 3)})
    result = launch(cfg)
    manifest = tiny_shards["manifest"]
    assert [r["epoch"] for r in result.history] == [1, 2]
    per_epoch = steps_per_epoch(manifest["splits"]["train"]["num_samples"], 2, 4, 1)
    assert [r["step"] for r in result.history] == [per_epoch, 2 * per_epoch]
    for record in result.history:
        # evaluation covers every test sample exactly once: all decodable ones, plus the corrupt one skipped
        assert record["num_eval_samples"] == manifest["splits"]["test"]["num_samples"] - 1
        assert record["skipped_eval"] == 1
        assert record["skipped_train"] == 1  # 30 rows split 15/15: every row is seen, none dropped
        assert {k for k, _ in record["skipped"]} == {tiny_shards["bad_train"], tiny_shards["bad_test"]}
        assert 0.0 <= record["top1"] <= 1.0 and record["images_per_second"] > 0
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 1.5
    weights = load_weights(result.latest_checkpoint)
    assert weights["epoch"] == 2 and any(k.startswith("resizer.") for k in weights["state_dict"])
    # every shard a resume reads unpickles with weights_only=True (the classes DeepSpeed stores are allowlisted)
    shards = sorted(Path(result.latest_checkpoint).glob("ds/*.pt"))
    assert len(shards) >= 3 and all(weights_only_engine().load(str(p), map_location="cpu") for p in shards)
    assert (tmp_path / "runs" / f"zero{stage}" / "tensorboard").is_dir()

    # the saved weights are what was evaluated: predicting the eval split gives the logged metrics
    trained = load_trained(str(tmp_path / "runs" / f"zero{stage}"))  # the run folder: its best checkpoint
    logged = next(r for r in result.history if r["epoch"] == trained.epoch)
    assert Path(trained.checkpoint, "model.safetensors").is_file() and Path(trained.checkpoint, "model.json").is_file()
    if precision == "fp32":
        predicted = predict(trained, shards=tiny_shards["path"], batch_size=7)
        assert len(predicted.rows) == logged["num_eval_samples"] and len(predicted.skipped) == 1
        assert predicted.metrics["top1"] == logged["top1"]
        assert predicted.metrics["eval_loss"] == pytest.approx(logged["eval_loss"], abs=1e-5)
    else:  # the fp32 master weights, not the bf16 copies the workers compute with
        floats = [v for k, v in weights["state_dict"].items() if v.is_floating_point() and "resizer" in k]
        assert all(v.dtype == torch.float32 for v in floats)
        assert any(not torch.equal(v, v.bfloat16().float()) for v in floats)


@pytest.fixture(scope="module")
def one_process_group():
    """A world of one over gloo, as Ray Train sets it up on a CPU worker; one per module, since DeepSpeed
    keeps the first group's ZeRO-2 groups (an engine after a second init fails: "Group ... is not registered")."""
    import socket

    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("DS_ACCELERATOR", "cpu"), ("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
            patch.setenv(name, value)  # what Ray Train sets on a worker
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        yield
        torch.distributed.destroy_process_group()


def _tiny_engine_steps(cfg: JobConfig, steps: int = 2) -> tuple[Any, torch.Tensor]:
    """A real DeepSpeed engine for `cfg` after `steps` steps on a fixed batch, and the resizer's first weights."""
    from pipeline.train import setup_model_and_engine

    torch.manual_seed(0)
    engine = setup_model_and_engine(cfg, num_outputs=3, world_size=1, warmup_steps=1, total_steps=4)
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2])
    before = engine.module.resizer.out_conv.weight.detach().clone()
    for _ in range(steps):
        engine.backward(torch.nn.functional.cross_entropy(engine(pixels).float(), labels))
        engine.step()
    return engine, before


def _tiny_cfg(zero_stage: int = 2, **changes: Any) -> JobConfig:
    cfg = JobConfig(
        resizer=ResizerConfig(num_filters=4, zero_init_last=False),
        model=ModelConfig(backbone="resnet18", pretrained=False, img_size=16),
        data=DataConfig(resize_size=None, crop_size=32, batch_size=2),
        deepspeed=DeepSpeedConfig(zero_stage=zero_stage, precision="fp32"),
    )
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)
                                       for section, fields in changes.items()})


def test_a_channels_last_model_takes_deepspeed_steps(one_process_group):
    """DeepSpeed broadcasts every parameter viewed as bytes at start-up: channels-last weights broke that
    (`self.stride(-1) must be 1`); the activations are what goes channels-last."""
    engine, before = _tiny_engine_steps(_tiny_cfg(model={"channels_last": True}))
    assert not torch.equal(before, engine.module.resizer.out_conv.weight)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_the_fused_adamw_makes_the_multi_tensor_update_within_rounding(one_process_group, zero_stage):
    """optim.fused (the default) runs torch's fused AdamW under DeepSpeed: over ZeRO's flat fp32 partitions
    (stage 2) and the module's own parameters (stage 0), two steps move the weights as the foreach kernels do.

    Not element for element: a bias in front of a batch norm gets a gradient near zero, where Adam's
    g / (sqrt(v) + eps) turns rounding into up to lr per element (measured: 0.4% of the update's norm)."""
    from pipeline.model import build_model

    cfg = _tiny_cfg(zero_stage, optim={"lr": 1e-2})
    fused, _ = _tiny_engine_steps(cfg)
    foreach, _ = _tiny_engine_steps(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, fused=False)))
    torch_optimizer = getattr(fused.optimizer, "optimizer", fused.optimizer)  # ZeRO 1-2 wrap it
    assert isinstance(torch_optimizer, torch.optim.AdamW) and torch_optimizer.defaults["fused"] is True
    torch.manual_seed(0)
    start = dict(build_model(cfg.model, cfg.resizer, 3).named_parameters())  # the engines' initial weights
    reference = dict(foreach.module.named_parameters())

    def norm(tensors) -> float:
        return float(sum((t.detach().double() ** 2).sum() for t in tensors) ** 0.5)

    update = norm(p - start[name] for name, p in fused.module.named_parameters())
    apart = norm(p - reference[name] for name, p in fused.module.named_parameters())
    assert update > 0.1 and apart < 0.01 * update


def test_an_offloaded_optimizer_steps_on_the_cpu_as_on_the_device(one_process_group):
    """deepspeed.offload_optimizer keeps ZeRO's fp32 partitions and Adam's state in CPU memory and steps them with
    torch's AdamW there (DeepSpeed refused a client optimizer with offload until told not to): the same weights
    as without offload."""
    cfg = _tiny_cfg(2, optim={"lr": 1e-2})
    offloaded, before = _tiny_engine_steps(dataclasses.replace(cfg, deepspeed=dataclasses.replace(cfg.deepspeed, offload_optimizer=True)))
    resident, _ = _tiny_engine_steps(cfg)
    weight = offloaded.module.resizer.out_conv.weight.detach()
    assert (weight - before).abs().max() > 1e-3
    assert torch.allclose(weight, resident.module.resizer.out_conv.weight.detach(), atol=1e-6)


def test_gradient_checkpointing_takes_the_steps_it_takes_without(one_process_group):
    """The resizer's recomputation in backward under DeepSpeed (ZeRO-2): the weights after two steps are those
    without recomputation. ZeRO-3 with recomputation trains in test_two_workers_train_and_evaluate_under_zero
    (in Ray workers: a ZeRO-3 engine replaces torch's F.linear for the rest of its process)."""
    cfg = _tiny_cfg(2, optim={"lr": 1e-2})
    recomputed, before = _tiny_engine_steps(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, grad_checkpointing=True)))
    kept, _ = _tiny_engine_steps(cfg)
    assert recomputed.module.grad_checkpointing and not kept.module.grad_checkpointing
    assert (recomputed.module.resizer.out_conv.weight - before).abs().max() > 1e-3
    for (name, p), q in zip(recomputed.module.resizer.named_parameters(), kept.module.resizer.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_deepspeed_loads_without_importing_mlflow_and_mlflow_still_imports_after():
    """Every Train worker imports DeepSpeed, whose autotuner tries `import mlflow` (1.5 CPU-s when it is installed,
    as the `mlflow` extra installs it); the run's own MLflow logging must still import it afterwards."""
    import subprocess
    import sys

    check = ("import sys\n"
             "from pipeline.train import import_deepspeed\n"
             "import_deepspeed()\n"
             "loaded = 'mlflow' in sys.modules\n"
             "import mlflow, deepspeed.autotuning.autotuner as tuner\n"
             "print(loaded, mlflow.__name__, tuner.has_mlflow)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["False", "mlflow", "False"]


def test_checkpoint_staging_folders_of_dead_workers_are_removed_by_the_next_save(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from pipeline.train import STAGING_PREFIX, local_checkpoint_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's temporary space
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"{STAGING_PREFIX}{dead.pid}-x1"  # a worker killed mid-save
    orphan.mkdir()
    (orphan / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"shard")
    uploading = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-x2"  # a live worker's checkpoint, still uploading
    uploading.mkdir()
    someone_elses = tmp_path / "ckpt-notes"
    someone_elses.mkdir()
    new = Path(local_checkpoint_folder())
    assert not orphan.exists() and uploading.is_dir() and someone_elses.is_dir()
    assert new.parent == tmp_path and new.name.startswith(f"{STAGING_PREFIX}{os.getpid()}-")
