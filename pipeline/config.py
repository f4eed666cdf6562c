"""Typed configuration: one frozen dataclass tree per job.

A job file builds a `JobConfig` in a function, variants come from `dataclasses.replace` or from
`--set section.field=value` overrides, and the tree crosses the Ray boundary as a plain dict
(`to_dict` / `from_dict`). Every field is validated in `__post_init__`; errors name the field and
the allowed values.

Example:
    cfg = apply_overrides(JobConfig(), ["optim.lr=1e-5", "resizer.num_filters=32"])
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from pipeline.tasks import TASKS

Interpolation = Literal["bilinear", "bicubic", "nearest", "area"]
Precision = Literal["bf16", "fp16", "fp32"]
Decode = Literal["cpu", "gpu"]


MAX_IMAGE_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS, which data_prep enforces (checked in tests)
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _check_literal(section: str, name: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"{section}.{name}={value!r} is not allowed; choose one of {list(options)}")


def _resizer_kinds(*, learned: bool | None = None) -> tuple[str, ...]:
    """The kinds of the resizer registry (`pipeline.resizer.RESIZERS`): all, or the learned or fixed ones.

    Imported when a config is checked, not with this module: configs travel to Ray Data's
    coordinators, which should not load torch (the registry's modules need it) to unpickle them.
    """
    from pipeline import resizer

    return resizer.RESIZER_KINDS if learned is None else resizer.LEARNED_KINDS if learned else resizer.FIXED_KINDS


def _check_positive(section: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{section}.{name}={value!r} must be {bound}")


def _check_literals(obj: Any, section: str) -> None:
    """Checks every `Literal[...]` field of a config dataclass against its options."""
    for f in dataclasses.fields(obj):
        hint = typing.get_type_hints(type(obj))[f.name]
        if get_origin(hint) is Literal:
            _check_literal(section, f.name, getattr(obj, f.name), get_args(hint))


@dataclass(frozen=True, kw_only=True)
class ResizerConfig:
    """The resizer in front of the backbone (Talebi & Milanfar 2021, docs/method.md#architecture).

    Attributes:
        kind: an entry of the resizer registry (`pipeline.resizer.RESIZERS`): "learned" for the
            paper's CNN, or a fixed resizer (the baseline); `*_aa` variants resize with antialiasing.
        num_filters: n, channels of the resizer's feature maps (paper: 16 or 32).
        num_res_blocks: r, residual blocks, chained (paper: 1 to 4).
        negative_slope: LeakyReLU slope.
        interpolation: resampling used inside the learned resizer (and its image skip).
        antialias: antialias the learned resizer's internal resampling (the paper: no).
        zero_init_last: zero-initialise the last 7x7 conv so training starts from the plain resize.
        muller_layers: MULLER's L (kind "muller", Tu et al. 2023): 2 trainable scalars per layer.
        muller_kernel_size: taps of MULLER's Gaussian blur (odd).
        muller_sigma: its standard deviation.
        muller_avg_pool: average-pool by input // output before MULLER's bilinear base resize.
        muller_antialias: antialias MULLER's base resize.
    """

    kind: str = "learned"
    num_filters: int = 16
    num_res_blocks: int = 1
    negative_slope: float = 0.2
    interpolation: Interpolation = "bilinear"
    antialias: bool = False
    zero_init_last: bool = True
    muller_layers: int = 2
    muller_kernel_size: int = 5
    muller_sigma: float = 1.0
    muller_avg_pool: bool = False
    muller_antialias: bool = False

    def __post_init__(self) -> None:
        _check_literals(self, "resizer")
        _check_literal("resizer", "kind", self.kind, _resizer_kinds())
        _check_positive("resizer", "num_filters", self.num_filters)
        _check_positive("resizer", "num_res_blocks", self.num_res_blocks, allow_zero=True)
        _check_positive("resizer", "negative_slope", self.negative_slope, allow_zero=True)
        _check_positive("resizer", "muller_layers", self.muller_layers)
        _check_positive("resizer", "muller_sigma", self.muller_sigma)
        if self.muller_kernel_size < 1 or self.muller_kernel_size % 2 == 0:
            raise ValueError(f"resizer.muller_kernel_size={self.muller_kernel_size} must be odd and positive (e.g. 5)")
        if self.antialias and self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                f"resizer.antialias=True needs resizer.interpolation in ['bilinear', 'bicubic'], "
                f"got {self.interpolation!r}"
            )


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The timm backbone behind the resizer.

    Attributes:
        backbone: any timm classifier name; Swin-L at 384 by default.
        pretrained: load timm's pretrained weights (from the hub or its cache).
        checkpoint_path: a local weights file (timm/torch state dict) used instead of the hub.
        weights_url: pretrained weights at an http(s) URL (an internal mirror, an artifact store) instead of
            timm's hub: fetched once per node into torch's hub cache (`$TORCH_HOME/hub/checkpoints`).
        img_size: backbone input side; None takes it from the backbone's own data config.
        backbone_kwargs: extra keyword arguments for `timm.create_model` (for example a
            scaled-down Swin: `{"embed_dim": 32, "depths": [1, 1], ...}`).
        drop_path_rate: stochastic depth of the backbone; None keeps the backbone's own default (timm's
            Swin: 0.1, ResNet: 0), 0.0 turns it off.
        grad_checkpointing: recompute the backbone's and a learned resizer's activations in backward instead of
            keeping them (Swin-L + learned resizer at 768 → 384, bf16: 99 MiB per image instead of 627).
        channels_last: run convolutions on channels-last activations (resizer and backbone; weights stay
            contiguous, as DeepSpeed's parameter broadcast needs).
        compile: `torch.compile` the model (DeepSpeed's `engine.compile`, inductor): the first steps compile
            (minutes on a few CPU cores; CPUs need a C++ compiler), later steps run fused kernels.
    """

    backbone: str = "swin_large_patch4_window12_384"
    pretrained: bool = True
    checkpoint_path: str | None = None
    weights_url: str | None = None
    img_size: int | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float | None = None
    grad_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if not self.backbone:
            raise ValueError("model.backbone is empty; give a timm model name, e.g. 'resnet50'")
        if self.img_size is not None:
            _check_positive("model", "img_size", self.img_size)
        if self.drop_path_rate is not None and not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate={self.drop_path_rate} must be in [0, 1)")
        if self.weights_url is not None:
            if not self.weights_url.startswith(("http://", "https://")):
                raise ValueError(
                    f"model.weights_url={self.weights_url!r} must be an http(s) URL; for a file use model.checkpoint_path"
                )
            if self.checkpoint_path is not None:
                raise ValueError("model.weights_url and model.checkpoint_path both give the weights; set one of them")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Shards written by `python -m data_prep` and the CPU-side transforms.

    Attributes:
        path: folder or URI (s3://, gs://) holding `manifest.json` and `<split>-NNNNNN.tar`.
        train_split: split trained on.
        eval_split: split evaluated on, every sample exactly once.
        resize_size: train and eval images are first resized to this square side (aspect not
            kept, as in the reference recipe); None feeds crops at the image's own scale.
        crop_size: random (train) or centre (eval) crop side: the resizer's input.
        hflip: random horizontal flip in training.
        batch_size: micro-batch per worker.
        shuffle_buffer: rows in each worker's local shuffle buffer (files are shuffled too).
        strict: stop on the first undecodable sample instead of skipping and counting it.
        num_classes: classes the recipe expects (checked against the manifest before launch);
            None takes whatever the shards hold.
        num_cpus_per_read: CPUs Ray Data reserves for each read / decode task.
        decode: where images are decoded, resized and cropped: `cpu` in Ray Data's read tasks, which
            ship uint8 crops; `gpu` on the Train worker's device in batches (nvJPEG), with Ray Data
            shipping the JPEG bytes and each crop drawn from the header. On a CPU-only run `gpu`
            decodes on the worker's CPU.
        max_pixels: an image with more pixels is skipped and counted, not decoded (a decompression bomb
            in a shard would take a read task's memory); the default is data_prep's limit, Pillow's.
    """

    path: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    resize_size: int | None = 1020
    crop_size: int = 768
    hflip: bool = True
    batch_size: int = 8
    shuffle_buffer: int = 256
    strict: bool = False
    num_classes: int | None = None
    num_cpus_per_read: float = 1.0
    decode: Decode = "cpu"
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        _check_positive("data", "crop_size", self.crop_size)
        _check_positive("data", "max_pixels", self.max_pixels)
        _check_positive("data", "batch_size", self.batch_size)
        _check_positive("data", "shuffle_buffer", self.shuffle_buffer, allow_zero=True)
        _check_positive("data", "num_cpus_per_read", self.num_cpus_per_read)
        if self.num_classes is not None:
            _check_positive("data", "num_classes", self.num_classes)
        if self.resize_size is not None and self.resize_size < self.crop_size:
            raise ValueError(
                f"data.resize_size={self.resize_size} is smaller than data.crop_size="
                f"{self.crop_size}; set resize_size >= crop_size or None"
            )


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with a linear warm-up then cosine schedule (durations in epochs, converted to steps
    in one place: `pipeline.train.schedule_steps`).

    Attributes:
        lr: base learning rate (backbone).
        resizer_lr: the resizer's own learning rate; None uses `lr`.
        weight_decay: AdamW decay, not applied to norms, biases and position tables.
        betas: Adam betas.
        eps: Adam epsilon.
        grad_clip: global gradient norm clip; 0 disables it.
        grad_accum: micro-batches accumulated per optimizer step.
        epochs: training epochs.
        warmup_epochs: linear warm-up length.
        warmup_start_factor: warm-up starts at this fraction of the learning rate.
        min_lr_factor: cosine ends at this fraction of the learning rate.
        fused: torch's fused AdamW kernel (one pass over each parameter group per step, on GPUs and CPUs);
            False: the multi-tensor (foreach) kernels. The same update within float rounding.
    """

    lr: float = 5e-6
    resizer_lr: float | None = None
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 5.0
    grad_accum: int = 1
    epochs: int = 100
    warmup_epochs: float = 5.0
    warmup_start_factor: float = 0.01
    min_lr_factor: float = 0.0
    fused: bool = True

    def __post_init__(self) -> None:
        _check_positive("optim", "lr", self.lr)
        if self.resizer_lr is not None:
            _check_positive("optim", "resizer_lr", self.resizer_lr)
        _check_positive("optim", "weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("optim", "grad_clip", self.grad_clip, allow_zero=True)
        _check_positive("optim", "grad_accum", self.grad_accum)
        _check_positive("optim", "epochs", self.epochs)
        _check_positive("optim", "warmup_epochs", self.warmup_epochs, allow_zero=True)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas={self.betas} must be two numbers in [0, 1)")
        if not 0.0 < self.warmup_start_factor <= 1.0:
            raise ValueError(f"optim.warmup_start_factor={self.warmup_start_factor} must be in (0, 1]")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ValueError(f"optim.min_lr_factor={self.min_lr_factor} must be in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class DeepSpeedConfig:
    """DeepSpeed engine options; the JSON config is derived by `pipeline.train.deepspeed_config`.

    Attributes:
        zero_stage: ZeRO stage 0 (plain data parallel) to 3.
        precision: "bf16", "fp16" (dynamic loss scale) or "fp32". On CPU only fp32 and bf16 run.
        offload_optimizer: keep ZeRO's fp32 partitions and Adam's state in CPU memory and step them there with torch's
            AdamW (ZeRO 1-3); frees GPU memory for a larger batch at the cost of copies each step.
        initial_scale_power: fp16 dynamic loss scale starts at 2**this.
    """

    zero_stage: int = 2
    precision: Precision = "bf16"
    offload_optimizer: bool = False
    initial_scale_power: int = 16

    def __post_init__(self) -> None:
        _check_literals(self, "deepspeed")
        _check_literal("deepspeed", "zero_stage", self.zero_stage, (0, 1, 2, 3))
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer=True needs deepspeed.zero_stage in [1, 2, 3]")


ResumePolicy = Literal["auto", "never", "must", "allow_changes"]
CheckpointUpload = Literal["async", "sync"]


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where and how a run executes.

    Attributes:
        name: run name; rerunning with the same name and storage resumes.
        storage: folder or URI for checkpoints, TensorBoard logs and reports.
        num_workers: Ray Train workers (one per GPU); with `min_workers`, the most it runs with.
        min_workers: train elastically: start with as few as this many workers when the cluster has no
            more, grow back to `num_workers` when nodes return, and continue on the workers that are
            left after a node is lost (the ZeRO checkpoint is converted to a universal one for the new
            worker count). None: exactly `num_workers`. Samples per optimizer step stay those of
            `num_workers` (`optim.grad_accum` is scaled; see `pipeline.train.accumulation`).
        use_gpu: None picks GPUs when the cluster has them.
        autoscale: the cluster grows on demand: ask its autoscaler for missing GPUs instead of
            failing fast (`ray up cluster.yaml` clusters start with zero GPU nodes).
        cpus_per_worker: CPUs reserved per Train worker.
        seed: seed for model init, augmentation and shuffling.
        checkpoint_every: save a checkpoint every this many epochs (the last epoch always).
        checkpoint_upload: "async": training goes on while Ray Train copies a saved checkpoint to
            `storage` in the background (the step waits only for the local save); "sync": it waits for
            the upload too. A just-in-time checkpoint on a preemption notice always uploads before
            training goes on.
        max_failures: worker-group restarts from the latest checkpoint before giving up (node
            preemptions are counted apart, without limit: `ray.train.FailureConfig.max_preemption_failures`).
        preemption_check_every: every this many optimizer steps, ask Ray Train whether a node of the run
            has a preemption notice (a spot reclaim, `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`);
            on the first, every worker saves a just-in-time checkpoint mid-epoch, so the restart on the
            nodes left loses only the steps after it. 0: never ask (a notice then costs the epoch).
        log_every: print a training line every this many steps (0: per epoch only).
        resume: what a rerun with this name and storage does. "auto": continue the run when its saved
            config differs only in fields that extend it (optim.epochs) or move it (workers, CPUs,
            retries, logging), refuse otherwise, listing the fields; "never": refuse if the run exists;
            "must": refuse if there is nothing to resume; "allow_changes": continue with the new values.
        mlflow: MLflow tracking URI (a server, or a local folder for a file store) to log params,
            per-epoch metrics and the resizer grid to (`pipeline.tracking`); None logs to TensorBoard only.
        mlflow_experiment: the MLflow experiment; "" uses "learned_resizer", or a search's or
            comparison's name for its trials.
    """

    name: str = "run"
    storage: str = "outputs"
    num_workers: int = 1
    min_workers: int | None = None
    use_gpu: bool | None = None
    autoscale: bool = False
    cpus_per_worker: float = 1.0
    seed: int = 0
    checkpoint_every: int = 1
    checkpoint_upload: CheckpointUpload = "async"
    max_failures: int = 3
    preemption_check_every: int = 1
    log_every: int = 50
    resume: ResumePolicy = "auto"
    mlflow: str | None = None
    mlflow_experiment: str = ""

    def __post_init__(self) -> None:
        _check_literals(self, "run")
        if not RUN_NAME.fullmatch(self.name):
            raise ValueError(
                f"run.name={self.name!r} must be a folder name: letters, digits, '_', '-' and '.', "
                "starting with a letter or digit (it names the run's folder inside run.storage)"
            )
        _check_positive("run", "num_workers", self.num_workers)
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(
                f"run.min_workers={self.min_workers} must be between 1 and run.num_workers={self.num_workers} "
                "(the most workers an elastic run uses); lower it, or raise --num-workers"
            )
        _check_positive("run", "cpus_per_worker", self.cpus_per_worker, allow_zero=True)
        _check_positive("run", "checkpoint_every", self.checkpoint_every)
        _check_positive("run", "max_failures", self.max_failures, allow_zero=True)
        _check_positive("run", "preemption_check_every", self.preemption_check_every, allow_zero=True)
        _check_positive("run", "log_every", self.log_every, allow_zero=True)


SearchAlgorithm = Literal["random", "optuna"]


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Ray Tune search over the resizer's hyperparameters (`SearchJobConfig`, run by `pipeline.tune.run_search`).

    Each hyperparameter lists its choices (or a [low, high] log-uniform range); a list of one value
    fixes it. Trial budgets are in epochs, ASHA's time unit.

    Attributes:
        num_samples: trials, the fixed-resizer arms included.
        num_filters: choices for resizer.num_filters.
        num_res_blocks: choices for resizer.num_res_blocks.
        input_sizes: choices for the resizer's input (data.crop_size; the backbone input stays fixed).
        lr: [low, high] log-uniform range of optim.lr.
        resizer_lr: [low, high] log-uniform range of optim.resizer_lr.
        zero_init_last: choices for resizer.zero_init_last.
        interpolation: choices for resizer.interpolation.
        families: the learned resizer families trials pick from ("learned": the CNN, "muller": MULLER);
            the first is the base of the paired points, and each other one gets a paired point too.
        muller_layers: choices for resizer.muller_layers (MULLER trials).
        fixed_arms: fixed resizers (e.g. "bilinear") run as trials with the base config, so every
            search also answers "does learning the resizer help here?".
        algorithm: "random" (Tune's variant generator) or "optuna" (TPE; `pip install optuna`).
        metric: the validation metric ASHA and the search optimize; None takes the task's own
            (top1, or srcc for quality). "eval_loss" with mode "min" is less noisy on small sets.
        mode: "max" or "min" for `metric`.
        grace_period: epochs every trial runs before ASHA may stop it.
        reduction_factor: ASHA keeps the top 1/reduction_factor at each rung.
        max_concurrent: trials at once; None derives it from the cluster's CPUs/GPUs.
    """

    num_samples: int = 16
    num_filters: tuple[int, ...] = (16, 32)
    num_res_blocks: tuple[int, ...] = (1, 2, 3, 4)
    input_sizes: tuple[int, ...] = (768,)
    lr: tuple[float, float] = (5e-6, 5e-6)
    resizer_lr: tuple[float, float] = (5e-6, 5e-4)
    zero_init_last: tuple[bool, ...] = (True, False)
    interpolation: tuple[Interpolation, ...] = ("bilinear", "bicubic")
    families: tuple[str, ...] = ("learned", "muller")
    muller_layers: tuple[int, ...] = (1, 2, 3)
    fixed_arms: tuple[str, ...] = ("bilinear",)
    algorithm: SearchAlgorithm = "random"
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    grace_period: int = 2
    reduction_factor: int = 3
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        _check_literals(self, "search")
        _check_positive("search", "num_samples", self.num_samples)
        _check_positive("search", "grace_period", self.grace_period)
        if self.reduction_factor < 2:
            raise ValueError(f"search.reduction_factor={self.reduction_factor} must be >= 2")
        for name in ("num_filters", "num_res_blocks", "input_sizes", "zero_init_last", "interpolation", "families", "muller_layers"):
            if not getattr(self, name):
                raise ValueError(f"search.{name} is empty; give at least one choice")
        for family in self.families:
            _check_literal("search", "families", family, _resizer_kinds(learned=True))
        for name in ("lr", "resizer_lr"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"search.{name}={getattr(self, name)} must be [low, high] with 0 < low <= high")
        for arm in self.fixed_arms:
            _check_literal("search", "fixed_arms", arm, _resizer_kinds(learned=False))
        if len(self.fixed_arms) + len(self.families) > self.num_samples:
            raise ValueError(
                f"search.num_samples={self.num_samples} is fewer than the paired points: one per family "
                f"{list(self.families)} and per fixed arm {list(self.fixed_arms)}; raise it"
            )
        if self.max_concurrent is not None:
            _check_positive("search", "max_concurrent", self.max_concurrent)


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Side-by-side comparison of resizers (`CompareJobConfig`, run by `pipeline.tune.run_comparison`).

    Every arm trains with the job's config, changing only the resizer (and, for the full-resolution
    arm, the backbone's input size), over the same seeds: same backbone, data, budget and init.

    Attributes:
        learned: (n, r) of each learned-resizer (CNN) arm (num_filters, num_res_blocks); the job's other
            resizer settings apply. The paper's default is ((16, 1),).
        muller: L of each MULLER arm (resizer.muller_layers; the job's other muller_* settings apply);
            () runs none. MULLER's paper default is (2,).
        fixed_arms: fixed resizers trained as arms ("area" is antialiased area averaging).
        baseline: the arm every other arm is compared with, paired by seed; one of fixed_arms.
        seeds: run.seed of each repetition (model init, augmentation, file order); every arm runs
            every seed.
        full_res: add the backbone at the full input resolution (model.img_size = data.crop_size,
            no downscale) as an upper reference; costly at 768 px.
        confidence: level of the report's intervals (t-intervals over seeds, bootstrap over seeds and images).
        bootstrap: replicates of the report's bootstrap intervals (`pipeline.paired`).
        max_concurrent: trials at once; None derives it from the cluster's CPUs/GPUs.
    """

    learned: tuple[tuple[int, int], ...] = ((16, 1),)
    muller: tuple[int, ...] = (2,)
    fixed_arms: tuple[str, ...] = ("bilinear", "bicubic", "area")
    baseline: str = "bilinear"
    seeds: tuple[int, ...] = (0, 1, 2)
    full_res: bool = False
    confidence: float = 0.95
    bootstrap: int = 1000
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        _check_positive("compare", "bootstrap", self.bootstrap)
        for arm in self.fixed_arms:
            _check_literal("compare", "fixed_arms", arm, _resizer_kinds(learned=False))
        if self.baseline not in self.fixed_arms:
            raise ValueError(
                f"compare.baseline={self.baseline!r} must be one of compare.fixed_arms={list(self.fixed_arms)}"
            )
        for n, r in self.learned:
            if n <= 0 or r < 0:
                raise ValueError(f"compare.learned has (n={n}, r={r}); need n > 0 and r >= 0")
        if any(layers <= 0 for layers in self.muller):
            raise ValueError(f"compare.muller={list(self.muller)}: every MULLER arm needs at least 1 layer")
        arms = (self.learned, self.muller, self.fixed_arms)
        if any(len(set(arm)) != len(arm) for arm in arms):
            raise ValueError(f"compare: an arm is listed twice in {list(self.learned)} / {list(self.muller)} / {list(self.fixed_arms)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"compare.seeds={list(self.seeds)} must be distinct seeds, at least one")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"compare.confidence={self.confidence} must be in (0, 1), e.g. 0.95")
        if self.max_concurrent is not None:
            _check_positive("compare", "max_concurrent", self.max_concurrent)


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """One training run: the whole tree that crosses the Ray boundary as `to_dict(cfg)`.

    Attributes:
        task: an entry of `pipeline.tasks.TASKS`: "classification" (top-1/top-5) or "quality"
            (AVA score distribution).
        resizer: the resizer.
        model: the backbone.
        data: shards and transforms.
        optim: optimizer and schedule.
        deepspeed: DeepSpeed engine options.
        run: naming, storage, scaling.
    """

    task: str = "classification"
    resizer: ResizerConfig = field(default_factory=ResizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check_literals(self, "job")
        _check_literal("job", "task", self.task, tuple(TASKS))

    @classmethod
    def extend(cls: type[C], cfg: JobConfig, **changes: Any) -> C:
        """A `cls` (a search or comparison config) holding the training config `cfg`, with `changes`."""
        return cls(**{**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(JobConfig)}, **changes})

    def training(self) -> JobConfig:
        """The training part of a (search or comparison) config: what every trial's workers get."""
        if type(self) is JobConfig:
            return self
        return JobConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(JobConfig)})


@dataclass(frozen=True, kw_only=True)
class SearchJobConfig(JobConfig):
    """A Ray Tune search: the training config of every trial, plus the search itself.

    Attributes:
        search: search space, algorithm and ASHA scheduler.
    """

    search: SearchConfig = field(default_factory=SearchConfig)


@dataclass(frozen=True, kw_only=True)
class CompareJobConfig(JobConfig):
    """A resizer comparison: the training config every arm shares, plus the arms and seeds.

    Attributes:
        compare: arms, seeds, baseline and confidence level.
    """

    compare: CompareConfig = field(default_factory=CompareConfig)


# ---------------------------------------------------------------- plain-dict round trip

def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain, JSON-serialisable data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


C = TypeVar("C")


def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "") -> C:
    """Rebuilds a config dataclass from `to_dict` output; unknown keys raise `ValueError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown config field(s) {[prefix + k for k in unknown]}; "
            f"{where or cls.__name__} has {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """Converts plain data (or a command-line string) to the field's declared type."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be a mapping of fields, got {value!r}")
        return from_dict(hint, value, where=path)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"{path}={value!r} does not fit {hint}: {'; '.join(errors)}")
    if origin is Literal:
        options = get_args(hint)
        for option in options:
            if value == option or (isinstance(value, str) and str(option) == value):
                return option
        raise ValueError(f"{path}={value!r} is not allowed; choose one of {list(options)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"{path}={value!r} must be true or false")
    if hint in (int, float, str):
        if hint is str:
            if not isinstance(value, str):
                raise ValueError(f"{path}={value!r} must be a string")
            return value
        if isinstance(value, bool):
            raise ValueError(f"{path}={value!r} must be a number, not a boolean")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}={value!r} must be {'an integer' if hint is int else 'a number'}") from None
        if hint is int and isinstance(value, float) and value != number:
            raise ValueError(f"{path}={value!r} must be an integer")
        if hint is float and not math.isfinite(number):  # float("nan") and float("inf") parse
            raise ValueError(f"{path}={value!r} must be a finite number")
        return number
    if origin is tuple:
        items = _parse_json(value, path) if isinstance(value, str) else value
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(items, (list, tuple)):
                raise ValueError(f"{path}={value!r} must be a list, e.g. [16, 32]")
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(items))
        if not isinstance(items, (list, tuple)) or len(items) != len(args):
            raise ValueError(f"{path}={value!r} must be a list of {len(args)} values")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, items)))
    if origin is dict:
        items = _parse_json(value, path) if isinstance(value, str) else value
        if not isinstance(items, dict):
            raise ValueError(f"{path}={value!r} must be a JSON object, e.g. '{{\"embed_dim\": 32}}'")
        return dict(items)
    raise TypeError(f"{path}: unsupported config type {hint}")


def _parse_json(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}={text!r} is not valid JSON ({err.msg})") from None


# ---------------------------------------------------------------- command-line overrides

C2 = TypeVar("C2", bound=JobConfig)


def apply_overrides(cfg: C2, overrides: list[str]) -> C2:
    """Applies `section.field=value` overrides, each typed by the dataclass field.

    Args:
        cfg: the job's config.
        overrides: strings such as "optim.lr=1e-5", "resizer.num_filters=32",
            "model.backbone_kwargs={\"embed_dim\": 32}", "optim.resizer_lr=none".

    Returns:
        A new, validated config.

    Raises:
        ValueError: on a malformed override, an unknown section or field, or a bad value.
    """
    values = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like section.field=value, e.g. optim.lr=1e-5")
        values[key.strip()] = raw.strip()
    return apply_values(cfg, values)


def apply_values(cfg: C2, values: dict[str, Any]) -> C2:
    """Sets dotted fields to values (Python values, or strings parsed by the field's type).

    Raises:
        ValueError: on an unknown section or field, or a bad value.
    """
    data = to_dict(cfg)
    for key, raw in values.items():
        item = f"{key}={raw}"
        parts = key.split(".")
        node, cls, where = data, type(cfg), ""
        for depth, part in enumerate(parts):
            names = {f.name: f for f in dataclasses.fields(cls)}
            if part not in names:
                raise ValueError(
                    f"unknown config field {key!r} in override {item!r}; "
                    f"{where or 'the job'} has {sorted(names)}"
                )
            hint = typing.get_type_hints(cls)[part]
            where = f"{where}.{part}" if where else part
            if depth == len(parts) - 1:
                if dataclasses.is_dataclass(hint):
                    raise ValueError(f"override {item!r} names a section; set one of its fields, e.g. {where}.<field>=...")
                node[part] = _coerce(hint, raw, where)
            else:
                if not dataclasses.is_dataclass(hint):
                    raise ValueError(f"override {item!r}: {where} is a field, not a section")
                node, cls = node[part], hint
    return from_dict(type(cfg), data)
