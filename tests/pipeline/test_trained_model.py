"""Using a trained model without Ray or DeepSpeed: load it, predict images, export it and reload the export.

The checkpoint here is written by the same writer the training loop uses (`write_safetensors`), for a tiny
model with its initial weights; `tests/pipeline/test_train.py` predicts a real run's evaluation split and
gets the metric the run logged.
"""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import DataConfig, JobConfig, ModelConfig, ResizerConfig, to_dict
from pipeline.export import FORMATS, export
from pipeline.model import build_model
from pipeline.predict import image_files, main as predict_main, predict
from pipeline.trained import load_trained, read_weights, write_safetensors

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = JobConfig(
        resizer=ResizerConfig(num_filters=4),
        model=ModelConfig(
            backbone="swin_tiny_patch4_window7_224", pretrained=False, img_size=16,
            backbone_kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2},
        ),
        data=DataConfig(resize_size=None, crop_size=32),
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.resizer, len(CLASSES))
    folder = tmp_path_factory.mktemp("run") / "checkpoint_epoch_0001"
    folder.mkdir()
    meta = {"config": to_dict(cfg), "num_outputs": len(CLASSES), "class_names": CLASSES, "epoch": 1, "step": 4}
    write_safetensors(str(folder), model.state_dict(), meta)
    torch.save({**meta, "state_dict": model.state_dict()}, folder / "model.pt")
    return folder


def jpeg(seed: int, size=(40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_both_weight_files_load_into_the_same_eval_mode_model(checkpoint: Path) -> None:
    trained = load_trained(str(checkpoint))
    assert not trained.model.training and trained.class_names == CLASSES and trained.epoch == 1
    from_safetensors, _ = read_weights(str(checkpoint))
    from_pt, meta = read_weights(str(checkpoint / "model.pt"))
    assert from_safetensors.keys() == from_pt.keys() and meta["num_outputs"] == 3
    assert all(torch.equal(from_safetensors[k], from_pt[k]) for k in from_pt)
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert trained.model(pixels).shape == (2, 3)


def test_predict_images_lists_the_unreadable_and_refuses_to_overwrite(checkpoint: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    (images / ".hidden").mkdir()
    (images / "a.jpg").write_bytes(jpeg(0))
    (images / "nested" / "b.JPEG").write_bytes(jpeg(1, size=(20, 50)))
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (images / ".hidden" / "c.jpg").write_bytes(jpeg(2))
    (images / "notes.txt").write_text("not an image")
    files = image_files([str(images)])
    assert [Path(f).name for f in files] == ["a.jpg", "broken.jpg", "b.JPEG"]

    result = predict(load_trained(str(checkpoint)), images=files, batch_size=2)
    assert [Path(r["image"]).name for r in result.rows] == ["a.jpg", "b.JPEG"]
    assert [Path(k).name for k, _ in result.skipped] == ["broken.jpg"] and "undecodable" in result.skipped[0][1]
    for row in result.rows:  # top-3 of 3 classes: every class once, probabilities sorted, summing to 1
        assert sorted(row[f"class_{i}"] for i in (1, 2, 3)) == sorted(CLASSES)
        assert row["prob_1"] >= row["prob_2"] >= row["prob_3"] and sum(row[f"prob_{i}"] for i in (1, 2, 3)) == pytest.approx(1, abs=1e-4)

    out = tmp_path / "predictions.csv"
    assert predict_main(["--checkpoint", str(checkpoint), "--out", str(out), str(images)]) == 0
    assert len(list(csv.DictReader(out.open()))) == 2
    assert "skipped" in capsys.readouterr().err
    assert predict_main(["--checkpoint", str(checkpoint), "--out", str(out), str(images)]) == 2  # never overwrites
    assert capsys.readouterr().err.startswith(f"error: {out} exists")


@pytest.mark.parametrize("resizer_only", [False, True], ids=["model", "resizer"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reloads_with_a_dynamic_batch_and_matches_the_eager_model(checkpoint: Path, tmp_path: Path, fmt: str, resizer_only: bool) -> None:
    trained = load_trained(str(checkpoint))
    result = export(trained, format=fmt, out=str(tmp_path / f"model.{fmt}"), resizer_only=resizer_only)
    assert result.input_shape[0] == 3  # traced at batch 2, checked at batch 3
    assert result.output_shape == ((3, 3, 16, 16) if resizer_only else (3, 3))
    assert result.max_abs_diff <= 1e-4
    with pytest.raises(FileExistsError):
        export(trained, format=fmt, out=result.path, resizer_only=resizer_only)


def test_a_run_in_a_bucket_loads_its_best_checkpoint_fetching_only_its_weights(checkpoint: Path, s3, tmp_path: Path) -> None:
    import json

    s3.bucket("models")
    for epoch in (1, 2):  # two kept checkpoints; epoch 1 scored best
        s3.fs.put(str(checkpoint), f"models/run/checkpoint_epoch_000{epoch}", recursive=True)
        s3.fs.pipe_file(f"models/run/checkpoint_epoch_000{epoch}/meta.json", json.dumps({"epoch": epoch}).encode())
        s3.fs.pipe_file(f"models/run/checkpoint_epoch_000{epoch}/ds/zero_pp_rank_0_mp_rank_00_optim_states.pt", b"shard")
    results = [{"checkpoint_dir_name": f"checkpoint_epoch_000{e}", "metrics": {"epoch": e, "top1": top1}} for e, top1 in ((1, 0.5), (2, 0.4))]
    s3.fs.pipe_file("models/run/checkpoint_manager_snapshot.json",
                    json.dumps({"checkpoint_results": results, "latest_checkpoint_result": results[-1]}).encode())
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = load_trained(str(checkpoint)).model(pixels)

    run = load_trained("s3://models/run")  # a run folder: its best checkpoint
    assert run.checkpoint == "s3://models/run/checkpoint_epoch_0001" and run.class_names == CLASSES
    assert torch.equal(run.model(pixels), expected)
    folder = load_trained("s3://models/run/checkpoint_epoch_0002")  # a checkpoint folder
    assert folder.checkpoint == "s3://models/run/checkpoint_epoch_0002" and torch.equal(folder.model(pixels), expected)
    weights = load_trained("s3://models/run/checkpoint_epoch_0002/model.pt")  # a weights file
    assert torch.equal(weights.model(pixels), expected)
    with pytest.raises(FileNotFoundError, match="^s3://models/run/checkpoint_epoch_0001/ds: no checkpoint_manager_snapshot.json"):
        load_trained("s3://models/run/checkpoint_epoch_0001/ds")
