"""A trained model, for using it: find a run's best checkpoint and load it without Ray or DeepSpeed.

    from pipeline.trained import load_trained
    trained = load_trained("outputs/cub_swinl")      # a run folder (its best checkpoint), a checkpoint
    logits = trained.model(pixels)                    # folder, or a model.safetensors / model.pt file

A checkpoint folder holds the weights twice, for two kinds of readers: `model.safetensors` (tensors only,
with `model.json` beside it: the config, the head size, the class names) and `model.pt` (the same in one
file for `torch.load(..., weights_only=True)`). Neither can run code when loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.config import JobConfig, from_dict
from pipeline.layout import META_FILE, RAY_CHECKPOINT_SNAPSHOT, WEIGHTS_FILE, is_uri
from pipeline.tasks import Task, get_task

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_META_FILE = "model.json"


@dataclass(frozen=True)
class Trained:
    """A model loaded from a checkpoint, in eval mode, with what it was trained as.

    Attributes:
        model: resizer + backbone (`pipeline.model.ResizerModel`), taking uint8 (B, 3, crop, crop).
        cfg: the training config saved with it (its data section gives the evaluation transform).
        num_outputs: the head's size.
        class_names: index → name, for classification runs.
        target_stats: regression runs: the training targets' mean and std (the model's output affine).
        checkpoint: the folder or file it was loaded from.
        epoch: the epoch the checkpoint was saved at.
    """

    model: torch.nn.Module
    cfg: JobConfig
    num_outputs: int
    class_names: list[str] | None
    checkpoint: str
    epoch: int | None

    target_stats: dict[str, float] | None = None

    @property
    def task(self) -> Task:
        return get_task(self.cfg.task, {"target_stats": self.target_stats})


def best_checkpoint(run_directory: str) -> str:
    """The checkpoint folder of a run with the best target metric among those Ray Train kept.

    Raises:
        FileNotFoundError: the folder holds no checkpoint of a finished epoch.
    """
    snapshot = os.path.join(run_directory, RAY_CHECKPOINT_SNAPSHOT)
    if not os.path.isfile(snapshot):
        raise FileNotFoundError(f"{run_directory}: no {RAY_CHECKPOINT_SNAPSHOT}; give a run folder that saved a checkpoint")
    with open(snapshot) as f:
        results = json.load(f).get("checkpoint_results", [])
    if not results:
        raise FileNotFoundError(f"{snapshot}: lists no checkpoint yet")
    from pipeline.checkpoint import checkpoint_score

    task = get_task(read_meta(os.path.join(run_directory, results[-1]["checkpoint_dir_name"]))["config"]["task"])
    best = max(results, key=lambda result: checkpoint_score(result["metrics"], task))
    return os.path.join(run_directory, best["checkpoint_dir_name"])


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder or weights file for `path`: a run folder gives its best checkpoint."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such run folder, checkpoint folder or weights file")
    if os.path.isfile(os.path.join(path, WEIGHTS_FILE)) or os.path.isfile(os.path.join(path, SAFETENSORS_FILE)):
        return path
    return best_checkpoint(path)


def read_weights(checkpoint: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata: config, num_outputs, class_names, epoch, step) of a checkpoint folder or file;
    `model.safetensors` + `model.json` when present, else `model.pt`."""
    from pipeline.checkpoint import load_weights

    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    tensors = checkpoint if checkpoint.endswith(".safetensors") else os.path.join(folder, SAFETENSORS_FILE)
    if os.path.isfile(tensors) and not checkpoint.endswith(".pt"):
        from safetensors.torch import load_file

        with open(os.path.join(os.path.dirname(tensors), SAFETENSORS_META_FILE)) as f:
            return load_file(tensors), json.load(f)
    saved = load_weights(checkpoint)
    return saved.pop("state_dict"), saved


def read_meta(checkpoint: str) -> dict[str, Any]:
    """The metadata of a checkpoint folder (config, num_outputs, class_names, epoch, step): `model.json`,
    or for checkpoints written before it existed, `model.pt`."""
    meta_file = os.path.join(checkpoint, SAFETENSORS_META_FILE)
    if os.path.isfile(meta_file):
        with open(meta_file) as f:
            return json.load(f)
    return read_weights(checkpoint)[1]


def write_safetensors(folder: str, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """`model.safetensors` (tensors only) and `model.json` (config, head size, class names, epoch) in `folder`."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, os.path.join(folder, SAFETENSORS_FILE))
    with open(os.path.join(folder, SAFETENSORS_META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


def load_trained(path: str, *, device: str | torch.device = "cpu") -> Trained:
    """The model of a run folder (its best checkpoint), a checkpoint folder or a weights file, in eval mode.

    The backbone is built from the saved config without downloading or reading its original weights:
    every weight comes from the checkpoint.
    """
    from pipeline.model import build_model

    if is_uri(path):
        return _load_remote(path, device=device)
    checkpoint = resolve_checkpoint(path)
    state_dict, meta = read_weights(checkpoint)
    cfg = from_dict(JobConfig, meta["config"])
    model_cfg = dataclasses.replace(cfg.model, pretrained=False, checkpoint_path=None)
    stats = meta.get("target_stats")
    affine = (float(stats["mean"]), float(stats["std"])) if stats else None
    model = build_model(model_cfg, cfg.resizer, int(meta["num_outputs"]), affine)
    model.load_state_dict(state_dict)
    return Trained(
        model=model.to(device).eval(),
        cfg=cfg,
        num_outputs=int(meta["num_outputs"]),
        class_names=meta.get("class_names"),
        checkpoint=checkpoint,
        epoch=meta.get("epoch"),
        target_stats=stats,
    )


def _load_remote(uri: str, *, device: str | torch.device) -> Trained:
    """`load_trained` of a run folder, checkpoint folder or weights file in object storage: the small
    files come down first (snapshot, `meta.json`, `model.json`), then only the chosen checkpoint's weights."""
    import posixpath

    from pipeline.storage import filesystem, local_copy, store_errors

    fs, target = filesystem(uri)
    with store_errors(uri):
        is_file = fs.isfile(target)
    if is_file:
        folder, name = uri.rstrip("/").rsplit("/", 1)
        with local_copy(folder, include=lambda relative: relative in (name, SAFETENSORS_META_FILE)) as local:
            trained = load_trained(str(local.path / name), device=device)
        return dataclasses.replace(trained, checkpoint=uri)

    def metadata(relative: str) -> bool:
        parts = relative.split("/")
        return parts[-1] in (RAY_CHECKPOINT_SNAPSHOT, META_FILE, SAFETENSORS_META_FILE) and len(parts) <= 2

    with local_copy(uri, include=metadata) as local:
        is_checkpoint = any((local.path / name).is_file() for name in (META_FILE, SAFETENSORS_META_FILE))
        try:
            checkpoint = local.path if is_checkpoint else Path(best_checkpoint(str(local.path)))
        except FileNotFoundError as err:  # name the user's folder, not the temporary copy
            raise FileNotFoundError(str(err).replace(str(local.path), uri.rstrip("/"))) from None
        relative = checkpoint.relative_to(local.path).as_posix()
        remote = posixpath.join(target.rstrip("/"), relative) if relative != "." else target.rstrip("/")
        name = SAFETENSORS_FILE if fs.isfile(posixpath.join(remote, SAFETENSORS_FILE)) else WEIGHTS_FILE
        local.fetch(posixpath.join(relative, name) if relative != "." else name)
        trained = load_trained(str(checkpoint), device=device)
    where = uri.rstrip("/") if relative == "." else f"{uri.rstrip('/')}/{relative}"
    return dataclasses.replace(trained, checkpoint=where)
