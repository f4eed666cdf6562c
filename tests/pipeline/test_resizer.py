import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ResizerConfig
from pipeline.resizer import FIXED_KINDS, FixedResizer, LearnedResizer, build_resizer, count_parameters

# The paper's ablation grid, conv weights only (Talebi & Milanfar 2021; docs/method.md).
PAPER_CONV_WEIGHTS = {
    (16, 1): 11_872, (16, 2): 16_480, (16, 3): 21_088, (16, 4): 25_696,
    (32, 1): 38_080, (32, 2): 56_512, (32, 3): 74_944, (32, 4): 93_376,
}


@pytest.mark.parametrize("n,r", sorted(PAPER_CONV_WEIGHTS))
def test_parameter_counts_match_the_paper_grid(n, r):
    resizer = LearnedResizer((8, 8), num_filters=n, num_res_blocks=r)
    assert count_parameters(resizer, conv_weights_only=True) == PAPER_CONV_WEIGHTS[(n, r)]


def test_parameter_count_with_biases_and_batch_norm():
    assert count_parameters(LearnedResizer((8, 8))) == 12_083


@pytest.mark.parametrize("in_hw,out_hw", [((64, 64), (32, 32)), ((32, 32), (48, 48)), ((60, 90), (24, 40)), ((40, 30), (50, 20))])
@pytest.mark.parametrize("kind", ["learned", *FIXED_KINDS])
def test_output_shape_down_up_and_non_square(kind, in_hw, out_hw):
    resizer = build_resizer(ResizerConfig(kind=kind), out_hw)
    assert resizer(torch.randn(2, 3, *in_hw)).shape == (2, 3, *out_hw)


def test_zero_initialised_last_conv_reproduces_bilinear_bit_for_bit():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 48, 64)
    resizer = LearnedResizer((24, 20), zero_init_last=True)
    plain = F.interpolate(x, size=(24, 20), mode="bilinear", align_corners=False, antialias=False)
    for mode in (resizer.train(), resizer.eval()):
        assert torch.equal(mode(x), plain)
    # and for an exact 2x downscale that is 2x2 average pooling
    assert torch.allclose(LearnedResizer((24, 32))(x), F.avg_pool2d(x, 2), atol=1e-6)


def test_without_zero_init_the_network_changes_the_output():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    resizer = LearnedResizer((16, 16), zero_init_last=False)
    assert not torch.allclose(resizer(x), F.interpolate(x, size=(16, 16), mode="bilinear"))


def test_residual_blocks_are_chained():
    """Block k must see block k-1's output; the widely copied bug feeds every block the bottleneck."""
    torch.manual_seed(0)
    resizer = LearnedResizer((16, 16), num_res_blocks=3, zero_init_last=False).eval()
    seen = {}
    for i, block in enumerate(resizer.res_blocks):
        block.register_forward_hook(lambda _m, inputs, output, i=i: seen.update({i: (inputs[0], output)}))
    resizer(torch.randn(2, 3, 32, 32))
    for i in (1, 2):
        assert torch.equal(seen[i][0], seen[i - 1][1])
    assert not torch.allclose(seen[1][0], seen[0][0])  # so the bug (same input to every block) would fail


def test_gradients_reach_every_resizer_parameter():
    resizer = LearnedResizer((16, 16), num_res_blocks=2, zero_init_last=True)
    resizer(torch.randn(2, 3, 32, 32)).square().mean().backward()
    # with a zero last conv only the last conv gets gradient at step 0; after one update all do
    assert resizer.out_conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        resizer.out_conv.weight.add_(0.01)
    resizer.zero_grad()
    resizer(torch.randn(2, 3, 32, 32)).square().mean().backward()
    for name, p in resizer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind,expected_mode", [("bilinear", "bilinear"), ("bicubic_aa", "bicubic")])
def test_fixed_resizer_matches_torch(kind, expected_mode):
    x = torch.randn(1, 3, 40, 40)
    out = FixedResizer((17, 23), kind)(x)
    ref = F.interpolate(x, size=(17, 23), mode=expected_mode, align_corners=False, antialias=kind.endswith("_aa"))
    assert torch.equal(out, ref)


def test_fixed_area_is_average_pooling():
    x = torch.randn(1, 3, 40, 40)
    assert torch.allclose(FixedResizer((20, 20), "area")(x), F.avg_pool2d(x, 2))


def test_fixed_resizer_rejects_learned():
    with pytest.raises(ValueError, match="resizer.kind='learned'"):
        FixedResizer((8, 8), "learned")


def test_the_activations_work_in_place_and_keep_half_the_full_resolution_tensors():
    """A convolution's backward needs its input, not its output, so the LeakyReLU after it may overwrite it:
    the head keeps two n-channel tensors at the input resolution for backward, not four, and computes the
    same values and gradients as out-of-place activations."""
    torch.manual_seed(0)
    resizer = LearnedResizer((16, 16), num_filters=8, zero_init_last=False)
    out_of_place = LearnedResizer((16, 16), num_filters=8, zero_init_last=False)
    out_of_place.load_state_dict(resizer.state_dict())
    for m in out_of_place.modules():
        if isinstance(m, torch.nn.LeakyReLU):
            m.inplace = False
    x = torch.randn(2, 3, 32, 32)
    full_resolution = {}
    for name, model in (("in place", resizer), ("out of place", out_of_place)):
        storages = set()

        def keep(t):
            if t.shape[-2:] == (32, 32) and t.shape[1] == 8:
                storages.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model(x).square().mean().backward()
        full_resolution[name] = len(storages)
    assert full_resolution == {"in place": 2, "out of place": 4}
    for (name, p), q in zip(resizer.named_parameters(), out_of_place.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    assert torch.equal(resizer(x), out_of_place(x))
