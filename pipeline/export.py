"""Export a trained model: ``python -m pipeline.export --checkpoint CKPT --format onnx|torchscript|pt2 --out PATH``.

The full model takes uint8 pixels (B, 3, crop, crop), as the data path gives them, and returns logits: it
normalizes, resizes and classifies inside. ``--resizer-only`` exports the resizer alone as a drop-in module:
normalized float (B, 3, crop, crop) in, (B, 3, S, S) out, for the backbone's normalization. The batch
dimension is dynamic. Every export is reloaded (ONNX Runtime, `torch.jit.load`, `torch.export.load`) and
run on a batch of another size against the eager model; the largest absolute difference is printed and
must stay under `tolerance`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

FORMATS = ("onnx", "torchscript", "pt2")
ONNX_OPSET = 18


@dataclass(frozen=True)
class Exported:
    """An export and its parity check: the file, and the largest |exported - eager| on a fresh batch."""

    path: str
    format: str
    max_abs_diff: float
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


class _Resizer(torch.nn.Module):
    """The resizer of a trained model as a module of its own (normalized pixels in, resized out)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.resizer = model.resizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resizer(x)


def example_input(trained: Any, batch: int, *, resizer_only: bool, seed: int = 0) -> torch.Tensor:
    """A batch the exported module takes: uint8 crops, or for the resizer, normalized float crops."""
    crop = trained.cfg.data.crop_size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, generator=generator)
    return trained.model.normalize(pixels) if resizer_only else pixels


def export(trained: Any, *, format: str, out: str, resizer_only: bool = False, tolerance: float = 1e-4) -> Exported:
    """Exports a trained model (`pipeline.trained.load_trained`), reloads the file and checks parity.

    Raises:
        ValueError: an unknown format, or a reloaded export that differs from the eager model by more than
            `tolerance` x max(1, the largest |output|) (relative for outputs in large units: a regression's).
        FileExistsError: `out` exists (an export never overwrites a file).
    """
    if format not in FORMATS:
        raise ValueError(f"--format {format!r} is not one of {list(FORMATS)}")
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; pass another --out (an export never overwrites a file)")
    module = (_Resizer(trained.model) if resizer_only else trained.model).cpu().eval()
    name_in, name_out = ("x", "resized") if resizer_only else ("pixels", "logits")
    traced_with, checked_with = example_input(trained, 2, resizer_only=resizer_only), example_input(
        trained, 3, resizer_only=resizer_only, seed=1
    )
    with torch.no_grad():
        if format == "onnx":
            torch.onnx.export(  # through torch.export (onnxscript), PyTorch's supported exporter
                module, (traced_with,), out, input_names=[name_in], output_names=[name_out],
                dynamic_shapes={name_in: {0: torch.export.Dim("batch", min=1, max=4096)}},
                opset_version=ONNX_OPSET, dynamo=True, verbose=False,
            )
            import onnxruntime

            session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
            exported = torch.from_numpy(session.run(None, {name_in: checked_with.numpy()})[0])
        elif format == "torchscript":
            torch.jit.trace(module, (traced_with,)).save(out)
            exported = torch.jit.load(out)(checked_with)
        else:
            program = torch.export.export(
                module, (traced_with,), dynamic_shapes={name_in: {0: torch.export.Dim("batch", min=1, max=4096)}}
            )
            torch.export.save(program, out)
            exported = torch.export.load(out).module()(checked_with)
        eager = module(checked_with)
    difference = float((exported.float() - eager.float()).abs().max())
    bound = tolerance * max(1.0, float(eager.float().abs().max()))
    if not difference <= bound:
        raise ValueError(f"{out}: the reloaded {format} export differs from the eager model by {difference:.3g} (> {bound:g})")
    return Exported(out, format, difference, tuple(checked_with.shape), tuple(eager.shape))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run folder (its best checkpoint), checkpoint folder or weights file")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="file to write (must not exist)")
    parser.add_argument("--resizer-only", action="store_true", help="export the resizer alone (normalized pixels in)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |export - eager|; default 1e-4")
    args = parser.parse_args(argv)
    from pipeline.trained import load_trained

    try:
        result = export(load_trained(args.checkpoint), format=args.format, out=args.out, resizer_only=args.resizer_only, tolerance=args.tolerance)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{result.format} -> {result.path}: input {list(result.input_shape)} (batch dynamic) -> output "
        f"{list(result.output_shape)}; max |export - eager| {result.max_abs_diff:.2e} on a batch of {result.input_shape[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
