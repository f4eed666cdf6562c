"""Generate TensorFlow reference outputs of the MULLER resizer for the tests.

Runs the original Keras layer ``MullerResizer`` (Tu, Milanfar, Talebi,
ICCV 2023; ``muller/models/muller.py`` in google-research/google-research) on
a fixed set of small, seeded inputs and writes, next to this script:

* ``muller_tf_reference.npz`` -- for every case ``<case>/input`` (NHWC
  float32), ``<case>/weights`` (float32, flat ``[w1, b1, w2, b2, ...]``;
  zeros for ``zero_init``) and ``<case>/output`` (NHWC float32), plus
  ``zero_init/bilinear``: plain ``tf.image.resize(..., "bilinear")`` of the
  ``zero_init`` input, which a zero-initialised resizer must reproduce.
* ``muller_tf_reference.json`` -- the versions used and every case's settings.

It needs TensorFlow, which is *not* a project dependency: use a throwaway
virtual environment, e.g.::

    python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu numpy

and a checkout of google-research (or just ``muller/models/muller.py`` in
that layout, with empty ``__init__.py`` files in ``muller/`` and
``muller/models/``) whose root is passed as ``--reference``. The reference
code is only imported from there; it is never copied into this repository.
From the repository root::

    /tmp/tfenv/bin/python tests/pipeline/data/make_muller_reference.py --reference /tmp/muller_ref
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REFERENCE = "google-research/google-research muller/models/muller.py"
REFERENCE_COMMIT = "4c4299485319ed72ef782020c81784be5468924e"

W2 = [1.7, 0.05, -0.8, -0.1]
W3 = [0.9, -0.2, 2.5, 0.1, -1.3, 0.03]

# name: (input (H, W), target (h, w), layers, kernel, sigma, avg_pool,
#        antialias, init_weights or None)
CASES = [
    ("down_2l", (37, 53), (16, 24), 2, 5, 1.0, False, False, W2),
    ("down_3l", (40, 30), (17, 11), 3, 5, 1.0, False, False, W3),
    ("down_2l_avgpool", (64, 48), (16, 12), 2, 5, 1.0, True, False, W2),
    # strides 3 x 3, SAME padding that does not divide evenly
    ("down_3l_avgpool_uneven", (50, 70), (16, 23), 3, 5, 1.0, True, False, W3),
    # strides 4 x 1: the reference pools only when both strides are > 1
    ("down_2l_avgpool_one_axis", (48, 20), (12, 16), 2, 5, 1.0, True, False,
     [1.2, 0.0, 0.7, 0.2]),
    ("up_2l", (19, 23), (40, 31), 2, 5, 1.0, True, False, W2),
    ("up_3l", (16, 16), (33, 47), 3, 5, 1.0, False, False, W3),
    ("kernel7", (45, 45), (20, 20), 2, 7, 1.5, False, False,
     [1.1, 0.1, -0.6, 0.0]),
    ("antialias_down", (60, 44), (20, 15), 2, 5, 1.0, False, True, W2),
    # all-zero weights: must equal plain bilinear resizing
    ("zero_init", (37, 53), (16, 24), 2, 5, 1.0, False, False, None),
]

BATCH = 2
CHANNELS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", required=True, type=Path,
        help="root of a google-research checkout (holding muller/models/muller.py)")
    parser.add_argument(
        "--out-dir", type=Path, default=Path(__file__).resolve().parent,
        help="where to write the .npz and .json (default: next to this script)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.reference.resolve()))
    import tensorflow as tf
    from muller.models.muller import MullerResizer

    arrays: dict[str, np.ndarray] = {}
    meta_cases: dict[str, dict] = {}
    for seed, (name, (H, W), target, layers, kernel, sigma, avg_pool,
               antialias, init) in enumerate(CASES):
        x = np.random.default_rng(seed).normal(
            size=(BATCH, H, W, CHANNELS)).astype(np.float32)
        layer = MullerResizer(
            target_size=target, num_layers=layers, kernel_size=kernel,
            stddev=sigma, avg_pool=avg_pool, antialias=antialias,
            init_weights=init)
        y = np.asarray(layer(tf.constant(x)), dtype=np.float32)
        weights = np.asarray(
            init if init is not None else [0.0] * (2 * layers), dtype=np.float32)
        assert weights.shape == (2 * layers,)
        assert y.shape == (BATCH, target[0], target[1], CHANNELS), y.shape
        assert np.all(np.isfinite(y)), name
        arrays[f"{name}/input"] = x
        arrays[f"{name}/weights"] = weights
        arrays[f"{name}/output"] = y
        if name == "zero_init":
            arrays[f"{name}/bilinear"] = np.asarray(
                tf.image.resize(x, target, method="bilinear", antialias=False),
                dtype=np.float32)
        meta_cases[name] = {
            "input_shape": list(x.shape),
            "target_size": list(target),
            "num_layers": layers,
            "kernel_size": kernel,
            "stddev": sigma,
            "avg_pool": avg_pool,
            "antialias": antialias,
            # as given to the reference (the .npz holds them as float32)
            "weights": [float(v) for v in (init or [0.0] * (2 * layers))],
        }

    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out_dir / "muller_tf_reference.npz", **arrays)
    meta = {
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "reference": REFERENCE,
        "reference_commit": REFERENCE_COMMIT,
        "cases": meta_cases,
    }
    with open(args.out_dir / "muller_tf_reference.json", "w") as f:
        json.dump(meta, f, sort_keys=True, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
