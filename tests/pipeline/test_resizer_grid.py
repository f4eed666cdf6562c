"""The resizer grid with any number of columns."""

import numpy as np
from PIL import Image

from pipeline.config import ModelConfig, ResizerConfig
from pipeline.model import build_model
from pipeline.resizer import FixedResizer
from pipeline.resizer_grid import resizer_columns_grid, resizer_grid

TINY = ModelConfig(
    backbone="swin_tiny_patch4_window7_224", pretrained=False, img_size=16,
    backbone_kwargs={"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2},
)


def test_grid_has_one_column_per_resizer_plus_input_and_learned_differences(tmp_path):
    model = build_model(TINY, ResizerConfig(num_filters=4), num_outputs=3).eval()
    crops = [np.random.default_rng(i).integers(0, 256, (3, 32, 32), dtype=np.uint8) for i in range(2)]
    size = (16, 16)
    columns = [(kind, FixedResizer(size, kind), kind) for kind in ("bilinear", "bicubic", "area")]
    columns.append(("learned n4", model.resizer, "learned"))
    wide = resizer_columns_grid(model, crops, columns, tmp_path / "all.png", difference_to="bilinear")
    narrow = resizer_columns_grid(model, crops, columns[:2], tmp_path / "two.png")
    width_wide, height = Image.open(wide).size
    width_narrow, _ = Image.open(narrow).size
    assert width_wide == 2 * width_narrow  # 6 columns (input, 4 resizers, |learned - bilinear|) vs 3
    assert height == 2 * 300  # one row of 3 inches at 100 dpi per crop
    assert Image.open(resizer_grid(model, crops, tmp_path / "one.png")).size == (1200, 600)  # the 4-column grid
