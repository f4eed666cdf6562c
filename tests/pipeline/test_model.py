import io

import pytest
import torch

from pipeline.config import ModelConfig, OptimConfig, ResizerConfig
from pipeline.model import build_model, create_backbone, param_groups

TINY_SWIN = ModelConfig(
    backbone="swin_tiny_patch4_window7_224",
    pretrained=False,
    img_size=32,
    backbone_kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4},
)
TINY_RESNET = ModelConfig(backbone="resnet18", pretrained=False, img_size=32)


@pytest.mark.parametrize("model_cfg", [TINY_SWIN, TINY_RESNET], ids=["swin", "resnet"])
@pytest.mark.parametrize("kind", ["learned", "bilinear"])
def test_tiny_backbones_run_forward_and_backward(model_cfg, kind):
    torch.manual_seed(0)
    model = build_model(model_cfg, ResizerConfig(kind=kind, zero_init_last=False), num_outputs=5)
    pixels = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
    logits = model(pixels)
    assert logits.shape == (2, 5)
    logits.logsumexp(-1).mean().backward()
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in backbone_grads) and any(g.abs().sum() > 0 for g in backbone_grads)
    for name, p in model.resizer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mean_std_and_input_size_come_from_the_backbone():
    model = build_model(ModelConfig(backbone="resnet18", pretrained=False), ResizerConfig(), num_outputs=3)
    assert model.input_size == 224  # from timm's data config
    assert torch.allclose(model.mean.flatten() / 255, torch.tensor([0.485, 0.456, 0.406]))
    assert model.resizer.output_size == (224, 224)
    white = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    assert torch.allclose(model.normalize(white)[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_param_groups_split_resizer_and_no_decay():
    model = build_model(TINY_SWIN, ResizerConfig(), num_outputs=4)
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(lr=1e-4, resizer_lr=1e-3, weight_decay=0.05))}
    assert set(groups) == {"backbone_decay", "backbone_no_decay", "resizer_decay", "resizer_no_decay"}
    assert groups["resizer_decay"]["lr"] == 1e-3 and groups["backbone_decay"]["lr"] == 1e-4
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone_decay"]["weight_decay"] == 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["backbone_no_decay"]["params"]}
    assert any("relative_position_bias_table" in n for n in no_decay)
    assert any(n.endswith("norm.weight") for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    decay = {names[id(p)] for p in groups["backbone_decay"]["params"]}
    assert all(p.ndim > 1 for p in groups["backbone_decay"]["params"]) and "backbone.head.fc.weight" in decay
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_local_checkpoint_file_loads_through_timm_with_a_new_head(tmp_path):
    source = create_backbone(TINY_RESNET, num_outputs=10)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    cfg = ModelConfig(backbone="resnet18", pretrained=False, checkpoint_path=str(path), img_size=None)
    loaded = create_backbone(cfg, num_outputs=3)  # head of another size is re-initialised
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert loaded.fc.weight.shape == (3, 512)


def _create_from_url(url: str, torch_home: str) -> float:
    import os

    os.environ["TORCH_HOME"] = torch_home
    from pipeline.model import create_backbone

    model = create_backbone(ModelConfig(backbone="resnet18", weights_url=url, img_size=None), num_outputs=3)
    return float(model.conv1.weight.detach().sum())


def test_weights_from_a_url_are_fetched_once_by_the_processes_of_a_node(tmp_path):
    """Two processes (two Train workers of one node) create the backbone from a mirror URL at once:
    one download, both models carry the served weights."""
    import multiprocessing

    from tests.servers import weights_server

    source = create_backbone(TINY_RESNET, num_outputs=1000)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    with weights_server(buffer.getvalue()) as (url, downloads):
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            sums = pool.starmap(_create_from_url, [(url, str(tmp_path / "torch_home"))] * 2)
    assert downloads == ["/resnet50_tiny.pth"]
    assert sums == pytest.approx([float(source.conv1.weight.detach().sum())] * 2)


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    cfg = ModelConfig(backbone="resnet18", checkpoint_path=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="model.checkpoint_path=.*nope.pth.*does not exist"):
        create_backbone(cfg, num_outputs=3)


def test_unknown_backbone_names_the_field():
    with pytest.raises(ValueError, match="model.backbone='not_a_model'"):
        create_backbone(ModelConfig(backbone="not_a_model", pretrained=False), num_outputs=3)


def test_gradient_checkpointing_and_channels_last_give_the_same_logits():
    torch.manual_seed(0)
    plain = build_model(TINY_SWIN, ResizerConfig(zero_init_last=False), num_outputs=4).eval()
    cfg = ModelConfig(**{**TINY_SWIN.__dict__, "grad_checkpointing": True, "channels_last": True})
    other = build_model(cfg, ResizerConfig(zero_init_last=False), num_outputs=4).eval()
    other.load_state_dict(plain.state_dict())
    pixels = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    assert torch.allclose(plain(pixels), other(pixels), atol=1e-5)


def test_gradient_checkpointing_recomputes_the_resizer_with_the_same_gradients_and_statistics():
    """model.grad_checkpointing recomputes the learned resizer (at the input resolution, its activations
    outweigh a checkpointed backbone's) as well as the backbone; the recomputation leaves the batch norms'
    running statistics as one forward leaves them, instead of counting the batch twice."""
    torch.manual_seed(0)
    plain = build_model(TINY_SWIN, ResizerConfig(zero_init_last=False), num_outputs=4).train()
    cfg = ModelConfig(**{**TINY_SWIN.__dict__, "grad_checkpointing": True})
    checkpointed = build_model(cfg, ResizerConfig(zero_init_last=False), num_outputs=4).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    for model in (plain, checkpointed):
        torch.nn.functional.cross_entropy(model(pixels), torch.tensor([0, 1, 3])).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name
    for (name, b), c in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(b, c), name
    assert int(checkpointed.resizer.head[4].num_batches_tracked) == 1
    assert checkpointed.resizer.head[4].momentum == plain.resizer.head[4].momentum  # restored after backward
    with torch.no_grad():  # evaluation and prediction: no recomputation
        assert torch.equal(checkpointed.eval()(pixels), plain.eval()(pixels))

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        checkpointed.train().resize(pixels)
    assert all(shape[1] == 3 for shape in saved)  # the pixels it recomputes from, none of the resizer's 16 channels


@pytest.mark.slow
def test_swin_large_with_resizer_runs_at_768_to_384():
    model = build_model(ModelConfig(pretrained=False), ResizerConfig(), num_outputs=200).eval()
    assert model.input_size == 384
    # 196.7M with the 1000-class head (docs/method.md); 195.5M with a 200-class one
    assert 195.4e6 < sum(p.numel() for p in model.backbone.parameters()) < 195.6e6
    with torch.inference_mode():
        logits = model(torch.randint(0, 256, (1, 3, 768, 768), dtype=torch.uint8))
    assert logits.shape == (1, 200) and torch.isfinite(logits).all()


def test_unreachable_pretrained_weights_say_what_to_do():
    import os
    import subprocess
    import sys

    code = (
        "from pipeline.model import create_backbone; from pipeline.config import ModelConfig\n"
        "create_backbone(ModelConfig(backbone='resnet18', pretrained=True), 3)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no hub, no cache: as on an air-gapped node
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "could not download pretrained weights for 'resnet18'" in result.stderr
    assert "model.checkpoint_path=" in result.stderr and "model.pretrained=false" in result.stderr
