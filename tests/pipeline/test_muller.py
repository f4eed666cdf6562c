"""MULLER against the published TensorFlow layer's own outputs, and as a resizer of this project.

The fixtures in tests/pipeline/data/ were made once by running google-research's `MullerResizer` (Keras)
in a throwaway environment with TensorFlow (not a project dependency): make_muller_reference.py says how.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ResizerConfig
from pipeline.resizer import FixedResizer, MullerResizer, build_resizer, count_parameters

DATA = Path(__file__).parent / "data"
CASES = json.loads((DATA / "muller_tf_reference.json").read_text())["cases"]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(DATA / "muller_tf_reference.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


def nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_match_the_tensorflow_reference(case: str, reference: dict[str, np.ndarray]) -> None:
    spec = CASES[case]
    module = MullerResizer(
        tuple(spec["target_size"]), num_layers=spec["num_layers"], kernel_size=spec["kernel_size"],
        sigma=spec["stddev"], avg_pool=spec["avg_pool"], antialias=spec["antialias"],
    )
    weights = torch.from_numpy(reference[f"{case}/weights"])
    with torch.no_grad():
        module.weight.copy_(weights[0::2])
        module.bias.copy_(weights[1::2])
        out = module(nchw(reference[f"{case}/input"]))
    expected = nchw(reference[f"{case}/output"])
    assert out.shape == expected.shape
    assert float((out - expected).abs().max()) <= 1e-5  # 2.7e-6 at most over the cases, measured


def test_zero_initialised_muller_is_exactly_the_bilinear_resizer(reference: dict[str, np.ndarray]) -> None:
    x = nchw(reference["zero_init/input"])
    muller = build_resizer(ResizerConfig(kind="muller"), (16, 24))
    with torch.no_grad():
        assert torch.equal(muller(x), FixedResizer((16, 24), "bilinear")(x))
        assert float((muller(x) - nchw(reference["zero_init/bilinear"])).abs().max()) <= 1e-5  # TF's own bilinear


def test_any_size_trains_and_counts_two_scalars_per_layer() -> None:
    muller = build_resizer(ResizerConfig(kind="muller", muller_layers=3), (24, 40))
    assert count_parameters(muller) == 6
    x = torch.randn(2, 3, 61, 33, requires_grad=True)
    out = muller(x)
    assert out.shape == (2, 3, 24, 40)
    out.square().mean().backward()
    assert muller.weight.grad is not None and muller.bias.grad.abs().sum() > 0 and x.grad is not None
    assert muller.to(torch.bfloat16)(x.detach().bfloat16()).dtype == torch.bfloat16  # the recipe's bf16


def test_config_refuses_an_even_kernel_and_no_layers() -> None:
    with pytest.raises(ValueError, match="muller_kernel_size=4 must be odd"):
        ResizerConfig(kind="muller", muller_kernel_size=4)
    with pytest.raises(ValueError, match="muller_layers"):
        ResizerConfig(kind="muller", muller_layers=0)
