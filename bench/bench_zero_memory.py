"""Benchmark 4: per-rank model-state memory of DeepSpeed ZeRO stages 0-3 against the ZeRO paper's formulas.

Two ranks (torch.multiprocessing, gloo, DS_ACCELERATOR=cpu) build Swin-L + learned resizer with
`pipeline.train.setup_model_and_engine` (torch AdamW, bf16 like the recipe), take one real step, then sum
the bytes of every distinct tensor storage the engine and its optimizer hold (parameters, gradients, fp32
master copies, Adam moments, flat buffers), grouped by where they hang. RSS would be too noisy.
The backbone runs at img_size 192 (window 12) to keep the CPU step short; that changes only the last stage's
relative-position tables (Ψ within 0.03% of the 384-px model), and Ψ is counted on the model measured.

Formulas (mixed-precision Adam, N ranks): stage 0 16Ψ; stage 1 4Ψ + 12Ψ/N; stage 2 2Ψ + 14Ψ/N; stage 3 16Ψ/N.

    python bench/bench_zero_memory.py [--stages 0,1,2,3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import Row  # noqa: E402

NUM_RANKS = 2


def formula_bytes(stage: int, num_params: int, num_ranks: int) -> float:
    psi, n = num_params, num_ranks
    return {0: 16 * psi, 1: 4 * psi + 12 * psi / n, 2: 2 * psi + 14 * psi / n, 3: 16 * psi / n}[stage]


def job_config(stage: int, quick: bool) -> Any:
    from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig

    backbone = "swin_tiny_patch4_window7_224" if quick else "swin_large_patch4_window12_384"
    kwargs = {"window_size": 6} if quick else {"window_size": 12}
    return JobConfig(
        resizer=ResizerConfig(kind="learned"),
        model=ModelConfig(backbone=backbone, pretrained=False, img_size=96 if quick else 192, backbone_kwargs=kwargs),
        data=DataConfig(crop_size=192 if quick else 384, resize_size=None, batch_size=1),
        optim=OptimConfig(lr=5e-6),
        deepspeed=DeepSpeedConfig(zero_stage=stage, precision="bf16"),
    )


def held_tensors(root: Any, prefix: str, seen_objects: set[int], out: dict[int, tuple[str, torch.Tensor]], depth: int = 0) -> None:
    """Every tensor reachable from `root` through attributes, lists, tuples and dicts, keyed by storage."""
    if depth > 6 or id(root) in seen_objects:
        return
    seen_objects.add(id(root))
    if isinstance(root, torch.Tensor):
        if root.device.type != "meta" and root.untyped_storage().nbytes() > 0:
            out.setdefault(root.untyped_storage().data_ptr(), (prefix, root))
        for name in ("grad", "ds_tensor"):  # ZeRO-3 keeps a parameter's partition in ds_tensor
            value = getattr(root, name, None)
            if isinstance(value, torch.Tensor):
                held_tensors(value, f"{prefix}.{name}", seen_objects, out, depth + 1)
        return
    if isinstance(root, torch.nn.Module):
        for name, param in root.named_parameters():
            held_tensors(param, f"{prefix}.param", seen_objects, out, depth + 1)
        return
    if isinstance(root, dict):
        items = root.items()
    elif isinstance(root, (list, tuple)):
        items = enumerate(root)
    elif hasattr(root, "__dict__") and type(root).__module__.split(".")[0] in ("deepspeed", "torch"):
        items = vars(root).items()
    else:
        return
    for key, value in items:
        name = key if isinstance(key, str) else "[]"
        if isinstance(key, torch.Tensor):  # optimizer state is keyed by parameter
            held_tensors(key, f"{prefix}.param", seen_objects, out, depth + 1)
        held_tensors(value, f"{prefix}.{name}", seen_objects, out, depth + 1)


def _rank_main(rank: int, stage: int, quick: bool, port: int, queue: Any) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(NUM_RANKS))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=NUM_RANKS)
    from pipeline.train import setup_model_and_engine

    cfg = job_config(stage, quick)
    torch.manual_seed(0)
    engine = setup_model_and_engine(cfg, num_outputs=200, world_size=NUM_RANKS, warmup_steps=1, total_steps=100)
    num_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters())
    pixels = torch.randint(0, 256, (1, 3, cfg.data.crop_size, cfg.data.crop_size), dtype=torch.uint8)
    # Step once (Adam's moments now exist), then backward again and measure before the second step:
    # the moment of the step when parameters, gradients and optimizer states are all held.
    for step in range(2):
        loss = torch.nn.functional.cross_entropy(engine(pixels).float(), torch.tensor([rank]))
        engine.backward(loss)
        if step == 0:
            engine.step()
    tensors: dict[int, tuple[str, torch.Tensor]] = {}
    seen: set[int] = set()
    held_tensors(engine.module, "module", seen, tensors)
    held_tensors(engine.optimizer, "optimizer", seen, tensors)
    by_place: dict[str, int] = defaultdict(int)
    for path, tensor in tensors.values():
        # group e.g. optimizer.bf16_groups.[] and optimizer.optimizer.state.[].exp_avg
        place = ".".join(p for p in path.split(".") if p != "[]")
        by_place[f"{place} ({str(tensor.dtype).removeprefix('torch.')})"] += tensor.untyped_storage().nbytes()
    # Communication buckets have a fixed size (DeepSpeed's reduce_bucket_size), not a per-parameter cost:
    # counted apart from the model states the formulas describe.
    buckets = sum(n for place, n in by_place.items() if "ipg" in place or "bucket" in place)
    queue.put({"rank": rank, "num_params": num_params, "bytes": sum(by_place.values()) - buckets,
               "bucket_bytes": buckets, "by_place": dict(by_place)})
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def measure_stage(stage: int, quick: bool, port: int) -> list[dict[str, Any]]:
    """Spawns the ranks for one stage; all memory is freed when they exit."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_rank_main, args=(stage, quick, port, queue), nprocs=NUM_RANKS, join=True, start_method="spawn")
    return sorted((queue.get() for _ in range(NUM_RANKS)), key=lambda r: r["rank"])


def run(*, quick: bool = False, stages: tuple[int, ...] = (0, 1, 2, 3)) -> dict[str, Any]:
    rows, figures = [], {"num_ranks": NUM_RANKS, "precision": "bf16", "optimizer": "torch AdamW", "stages": {}}
    model = "Swin-T + resizer (quick)" if quick else "Swin-L + resizer"
    for stage in stages:
        ranks = measure_stage(stage, quick, 29600 + stage)
        psi = ranks[0]["num_params"]
        expected = formula_bytes(stage, psi, NUM_RANKS)
        worst = max(ranks, key=lambda r: abs(r["bytes"] / expected - 1))
        ratio = worst["bytes"] / expected
        figures["stages"][stage] = {"num_params": psi, "formula_bytes": expected, "ranks": ranks,
                                    "bytes_per_param": [r["bytes"] / psi for r in ranks]}
        print(f"ZeRO-{stage}, {model}, Ψ={psi / 1e6:.2f}M, {NUM_RANKS} ranks: per rank "
              + ", ".join(f"{r['bytes'] / 2**30:.3f} GiB" for r in ranks)
              + f" vs formula {expected / 2**30:.3f} GiB = {ratio:.3f}x"
              + f" (+ {worst['bucket_bytes'] / 2**30:.3f} GiB of reduce buckets)")
        for place, nbytes in sorted(worst["by_place"].items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {nbytes / psi:6.2f} B/param  {place}")
        rows.append(Row(f"4 ZeRO-{stage} memory, {model}, {NUM_RANKS} ranks",
                        f"model states {worst['bytes'] / 2**30:.3f} GiB/rank ({worst['bytes'] / psi:.2f} B/param)"
                        + (f" + {worst['bucket_bytes'] / 2**30:.2f} GiB reduce buckets" if worst["bucket_bytes"] else ""),
                        f"formula {expected / 2**30:.3f} GiB ({expected / psi:.2f} B/param)", ratio,
                        "within 15%", abs(ratio - 1) <= 0.15))
    return {"figures": figures, "rows": [r.to_dict() for r in rows]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Swin-T instead of Swin-L")
    parser.add_argument("--stages", default="0,1,2,3")
    args = parser.parse_args()
    result = run(quick=args.quick, stages=tuple(int(s) for s in args.stages.split(",")))
    print(json.dumps(result["rows"], indent=2))
