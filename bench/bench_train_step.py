"""Train-step cost of the learned resizer against the fixed bilinear one, through the real engine.

Every measurement builds the model and DeepSpeed engine with `pipeline.train.setup_model_and_engine`
(the code the Ray Train workers run), then times full steps (forward, backward, optimizer) on
random uint8 batches, side by side in one process.

    python bench/bench_train_step.py              # CPU: ResNet-50 448→224 and a small Swin, learned vs bilinear
    python bench/bench_train_step.py --gpu        # one GPU: Swin-L 768→384, batch 8, bf16, ZeRO-2 (+ checkpointing)

Prints a table and writes JSON (`--out`). `run()` (used by `python -m bench`) measures the CPU pairs in one
process with their steps interleaved, compares the step-time ratio with the forward-FLOPs ratio
(`torch.utils.flop_counter.FlopCounterMode`), and reports the GPU figures stored in
`bench/results/train_step_h100.json` beside them; it also times torch's AdamW kernels (fused against
foreach, `optim.fused`) on the CPU, and reports the near-hardware GPU step stored by
`bench/bench_peak_step.py` (`bench/results/train_step_peak*.json`).

Target: the learned resizer's time overhead is no worse than its FLOPs overhead plus 10 points,
(t_learned / t_bilinear - 1) <= (F_learned / F_bilinear - 1) + 0.10.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig  # noqa: E402


def init_single_process(backend: str) -> None:
    """A world of one, as Ray Train would set it up on one worker."""
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29513")
    for name in ("RANK", "LOCAL_RANK"):
        os.environ.setdefault(name, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


def measure(cfg: JobConfig, *, device: torch.device, num_outputs: int, warmup: int, steps: int) -> dict[str, Any]:
    """Mean step time, images/s and peak memory of `steps` full training steps."""
    from pipeline.train import setup_model_and_engine

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    engine = setup_model_and_engine(cfg, num_outputs=num_outputs, world_size=1, warmup_steps=10, total_steps=1000)
    batch = cfg.data.batch_size
    pixels = torch.randint(0, 256, (batch, 3, cfg.data.crop_size, cfg.data.crop_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_outputs, (batch,), device=device)

    def step() -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(engine(pixels).float(), labels)
        engine.backward(loss)
        engine.step()
        return loss

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss.detach())  # waits for the device
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    result = {
        "resizer": cfg.resizer.kind,
        "backbone": cfg.model.backbone,
        "input": cfg.data.crop_size,
        "backbone_input": engine.module.input_size,
        "batch": batch,
        "precision": cfg.deepspeed.precision,
        "zero_stage": cfg.deepspeed.zero_stage,
        "grad_checkpointing": cfg.model.grad_checkpointing,
        "step_ms": seconds * 1000,
        "images_per_second": batch / seconds,
        "peak_memory_gib": peak,
        "resizer_params": sum(p.numel() for p in engine.module.resizer.parameters()),
    }
    del engine
    return result


def forward_flops(cfg: JobConfig, num_outputs: int = 200) -> int:
    """FLOPs of one image's forward pass (resizer + backbone), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.model import build_model

    model = build_model(cfg.model, cfg.resizer, num_outputs).eval()
    pixels = torch.randint(0, 256, (1, 3, cfg.data.crop_size, cfg.data.crop_size), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(pixels)
    return counter.get_total_flops()


def interleaved_step_times(
    pair: list[JobConfig], *, warmup: int, steps: int, num_outputs: int = 200, device: str = "cpu"
) -> list[float]:
    """Median step seconds of each config, both engines in one process, one step of each in turn.

    Interleaving makes the load of other processes on shared cores (or GPU clock changes) hit both
    variants alike.
    """
    from pipeline.train import setup_model_and_engine

    if device == "cuda":
        torch.cuda.set_device(0)
        init_single_process("nccl")
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        init_single_process("gloo")
    torch.manual_seed(0)
    engines = [setup_model_and_engine(cfg, num_outputs=num_outputs, world_size=1, warmup_steps=10, total_steps=1000) for cfg in pair]
    batch = pair[0].data.batch_size
    size = pair[0].data.crop_size
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=engines[0].device)
    labels = torch.randint(0, num_outputs, (batch,), device=engines[0].device)
    times: list[list[float]] = [[] for _ in pair]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for index in range(warmup + steps):
        for engine, out in zip(engines, times):
            sync()
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(engine(pixels).float(), labels)
            engine.backward(loss)
            engine.step()
            sync()
            if index >= warmup:
                out.append(time.perf_counter() - started)
    return [float(sorted(t)[len(t) // 2]) for t in times]


def component_rates(cfg: JobConfig, *, repeats: int = 5, num_outputs: int = 200) -> dict[str, dict[str, float]]:
    """Forward + backward of the resizer alone (at the crop size) and of the backbone alone (at its input
    size), each on its own random fp32 batch: median ms, FLOPs (FlopCounterMode, forward and backward) and
    the GFLOP/s they reach. Why the resizer costs more time than its FLOPs: it runs at a lower FLOP rate.
    """
    from time import perf_counter

    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.resizer, num_outputs).train()
    batch, size = cfg.data.batch_size, cfg.data.crop_size
    parts = {"resizer": (model.resizer, torch.randn(batch, 3, size, size)),
             "backbone": (model.backbone, torch.randn(batch, 3, model.input_size, model.input_size))}
    rates = {}
    for name, (module, x) in parts.items():
        counter = FlopCounterMode(display=False)
        with counter:
            module(x).float().sum().backward()
        seconds = []
        for _ in range(repeats):
            started = perf_counter()
            module(x).float().sum().backward()
            seconds.append(perf_counter() - started)
        median = sorted(seconds)[len(seconds) // 2]
        flops = counter.get_total_flops()
        rates[name] = {"ms": median * 1000, "gflops": flops / 1e9, "gflop_per_s": flops / median / 1e9}
    return rates


def overhead_row(name: str, time_ratio: float, flops_ratio: float, time_text: str) -> "Row":
    from bench.common import Row

    time_over, flops_over = time_ratio - 1.0, flops_ratio - 1.0
    return Row(f"3 resizer cost, {name}", f"learned step {time_text}: {time_over * 100:+.1f}% time",
               f"FLOPs ratio {flops_ratio:.3f}: {flops_over * 100:+.1f}% FLOPs", time_ratio,
               "time overhead <= FLOPs overhead + 10 pts", time_over <= flops_over + 0.10)


GPU_RESULTS = Path(__file__).resolve().parent / "results" / "train_step_h100.json"
GPU_INTERLEAVED = Path(__file__).resolve().parent / "results" / "train_step_h100_interleaved.json"


def run(*, quick: bool = False) -> dict[str, Any]:
    """CPU pairs measured now, interleaved; the FLOP rate of the resizer and the backbone alone; the stored
    GPU figures against Swin-L's FLOPs ratio."""
    from bench.bench_peak_step import adamw_ms, count_params, stored_rows
    from bench.common import Row

    warmup, steps = (1, 2) if quick else (1, 5)
    configs = cpu_configs(with_compile=not quick)
    rows, figures = [], {"warmup": warmup, "steps": steps, "cpu": [], "gpu": None}
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    for learned, bilinear in zip(configs[0::2], configs[1::2]):
        name = f"{learned.model.backbone} {learned.data.crop_size}→{learned.model.img_size or 224}, CPU fp32, batch {learned.data.batch_size}"
        name += "".join(f", {label}" for label, on in (("channels-last", learned.model.channels_last), ("compiled", learned.model.compile)) if on)
        flops = [forward_flops(cfg) for cfg in (learned, bilinear)]
        # a compiled engine compiles in its first steps (and again for backward): those are warm-up
        seconds = interleaved_step_times([learned, bilinear], warmup=warmup + 2 * learned.model.compile, steps=steps)
        time_ratio, flops_ratio = seconds[0] / seconds[1], flops[0] / flops[1]
        figures["cpu"].append({"setting": name, "step_ms": {"learned": seconds[0] * 1000, "bilinear": seconds[1] * 1000},
                               "forward_gflops": {"learned": flops[0] / 1e9, "bilinear": flops[1] / 1e9},
                               "time_ratio": time_ratio, "flops_ratio": flops_ratio})
        print(f"resizer cost, {name}: step {seconds[0] * 1000:.0f} vs {seconds[1] * 1000:.0f} ms = {time_ratio:.3f}x; "
              f"forward {flops[0] / 1e9:.2f} vs {flops[1] / 1e9:.2f} GFLOPs = {flops_ratio:.3f}x")
        rows.append(overhead_row(name, time_ratio, flops_ratio, f"{seconds[0] * 1000:.0f} vs {seconds[1] * 1000:.0f} ms"))
    resnet = configs[0]
    rates = component_rates(resnet, repeats=2 if quick else 5)
    figures["components"] = rates
    resizer, backbone = rates["resizer"], rates["backbone"]
    print(f"resizer cost, where the time goes: resizer {resizer['ms']:.0f} ms for {resizer['gflops']:.1f} GFLOPs "
          f"({resizer['gflop_per_s']:.0f} GFLOP/s), backbone {backbone['ms']:.0f} ms for {backbone['gflops']:.1f} GFLOPs "
          f"({backbone['gflop_per_s']:.0f} GFLOP/s)")
    rows.append(Row(
        f"3 resizer cost, where the time goes: {resnet.model.backbone} {resnet.data.crop_size}→224, CPU fp32, "
        f"batch {resnet.data.batch_size}, forward + backward of each part alone",
        f"resizer {resizer['gflop_per_s']:.0f} GFLOP/s ({resizer['ms']:.0f} ms, {resizer['gflops']:.1f} GFLOPs)",
        f"backbone {backbone['gflop_per_s']:.0f} GFLOP/s ({backbone['ms']:.0f} ms, {backbone['gflops']:.1f} GFLOPs)",
        resizer["gflop_per_s"] / backbone["gflop_per_s"], "report only", None))
    if GPU_INTERLEAVED.is_file():  # preferred: both variants in one process, steps alternated
        stored = json.loads(GPU_INTERLEAVED.read_text())
        learned_ms, bilinear_ms, flops_ratio = stored["learned_step_ms"], stored["bilinear_step_ms"], stored["flops_ratio"]
        name = f"Swin-L 768→384, {stored['device']}, bf16 ZeRO-2, batch 8, interleaved (stored {stored['date'][:10]})"
        figures["gpu"] = {"setting": name, "step_ms": {"learned": learned_ms, "bilinear": bilinear_ms},
                          "time_ratio": learned_ms / bilinear_ms, "flops_ratio": flops_ratio}
        print(f"resizer cost, {name}: {learned_ms:.0f} vs {bilinear_ms:.0f} ms = {learned_ms / bilinear_ms:.3f}x; "
              f"FLOPs ratio {flops_ratio:.3f}x")
        rows.append(overhead_row(name, learned_ms / bilinear_ms, flops_ratio, f"{learned_ms:.0f} vs {bilinear_ms:.0f} ms"))
    elif GPU_RESULTS.is_file():
        stored = json.loads(GPU_RESULTS.read_text())
        by_kind = {(r["resizer"], r["grad_checkpointing"]): r for r in stored["results"]}
        learned_ms, bilinear_ms = by_kind[("learned", True)]["step_ms"], by_kind[("bilinear", True)]["step_ms"]
        gpu_pair = [dataclasses.replace(c, model=dataclasses.replace(c.model, grad_checkpointing=False)) for c in gpu_configs()[:2]]
        flops = [forward_flops(cfg) for cfg in gpu_pair] if not quick else [None, None]
        flops_ratio = flops[0] / flops[1] if not quick else 1 + 2.90 / 104  # docs/method.md: 2.90 of 104 GMACs
        name = f"Swin-L 768→384, {stored['device']}, bf16 ZeRO-2, batch 8 (stored {stored['date'][:10]})"
        figures["gpu"] = {"setting": name, "step_ms": {"learned": learned_ms, "bilinear": bilinear_ms},
                          "forward_gflops": None if quick else {"learned": flops[0] / 1e9, "bilinear": flops[1] / 1e9},
                          "time_ratio": learned_ms / bilinear_ms, "flops_ratio": flops_ratio}
        print(f"resizer cost, {name}: {learned_ms:.0f} vs {bilinear_ms:.0f} ms = {learned_ms / bilinear_ms:.3f}x; "
              f"FLOPs ratio {flops_ratio:.3f}x")
        rows.append(overhead_row(name, learned_ms / bilinear_ms, flops_ratio, f"{learned_ms:.0f} vs {bilinear_ms:.0f} ms"))
    num_params = 25_557_032 if quick else count_params(gpu_configs()[0])  # ResNet-50's count in a quick run
    adamw = adamw_ms(num_params, torch.device("cpu"), repeats=3 if quick else 5)
    figures["adamw_cpu_ms"] = {"num_params": num_params, **adamw}
    print(f"AdamW over {num_params / 1e6:.0f} M fp32 parameters on the CPU: fused {adamw['fused']:.0f} ms, "
          f"foreach {adamw['foreach']:.0f} ms")
    rows.append(Row(f"3 optimizer step, AdamW over {num_params / 1e6:.0f} M fp32 parameters in 4 flat groups "
                    f"({'ResNet-50' if quick else 'Swin-L + resizer'}), CPU", f"fused {adamw['fused']:.0f} ms",
                    f"foreach {adamw['foreach']:.0f} ms", adamw["fused"] / adamw["foreach"], "fused faster (< 1x)",
                    adamw["fused"] < adamw["foreach"]))
    rows += stored_rows()
    return {"figures": figures, "rows": [r.to_dict() for r in rows]}


def variants(base: JobConfig, with_no_checkpointing: bool) -> list[JobConfig]:
    learned = base
    bilinear = dataclasses.replace(base, resizer=dataclasses.replace(base.resizer, kind="bilinear"))
    out = [learned, bilinear]
    if with_no_checkpointing:
        out.append(dataclasses.replace(base, model=dataclasses.replace(base.model, grad_checkpointing=False)))
    return out


def gpu_configs(full_res: bool = False) -> list[JobConfig]:
    """learned, bilinear, learned without checkpointing; with `full_res`: bilinear at 384 and the
    backbone at the crop's full 768 (the comparison's `--full-res` arm: the resizer is the identity)."""
    base = JobConfig(
        resizer=ResizerConfig(kind="learned"),
        model=ModelConfig(backbone="swin_large_patch4_window12_384", pretrained=False, grad_checkpointing=True),
        data=DataConfig(crop_size=768, resize_size=1020, batch_size=8),
        optim=OptimConfig(lr=5e-6),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="bf16"),
    )
    if full_res:
        bilinear = dataclasses.replace(base, resizer=dataclasses.replace(base.resizer, kind="bilinear"))
        return [bilinear, dataclasses.replace(bilinear, model=dataclasses.replace(base.model, img_size=768))]
    return variants(base, with_no_checkpointing=True)


def cpu_configs(with_compile: bool = False) -> list[JobConfig]:
    """(learned, bilinear) pairs: ResNet-50 448 → 224 as is, in channels-last, and compiled (`with_compile`);
    a small Swin 384 → 192."""
    resnet = JobConfig(
        resizer=ResizerConfig(kind="learned"),
        model=ModelConfig(backbone="resnet50", pretrained=False),
        data=DataConfig(crop_size=448, resize_size=None, batch_size=4),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
    )
    swin = JobConfig(
        resizer=ResizerConfig(kind="learned"),
        model=ModelConfig(
            backbone="swin_tiny_patch4_window7_224", pretrained=False, img_size=192,
            backbone_kwargs={"window_size": 6},
        ),
        data=DataConfig(crop_size=384, resize_size=None, batch_size=4),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
    )
    faster = [dataclasses.replace(resnet, model=dataclasses.replace(resnet.model, channels_last=True))]
    if with_compile:
        faster.append(dataclasses.replace(resnet, model=dataclasses.replace(resnet.model, channels_last=True, compile=True)))
    return variants(resnet, False) + [c for cfg in faster for c in variants(cfg, False)] + variants(swin, False)


def run_isolated(index: int, args: argparse.Namespace) -> dict[str, Any]:
    """One variant in its own process, so peak memory and allocator state are its own."""
    import subprocess

    command = [sys.executable, __file__, "--variant", str(index), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.gpu:
        command.append("--gpu")
    if args.full_res:
        command.append("--full-res")
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"variant {index} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="Swin-L 768→384 on one GPU (NCCL, bf16, ZeRO-2)")
    parser.add_argument(
        "--interleaved", action="store_true", help="with --gpu: learned and bilinear engines in one process, steps alternated"
    )
    parser.add_argument(
        "--full-res", action="store_true", help="with --gpu: bilinear 768→384 against the backbone at the full 768"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="bench/train_step.json")
    parser.add_argument("--variant", type=int, help=argparse.SUPPRESS)  # internal: run one variant
    args = parser.parse_args(argv)

    configs = gpu_configs(args.full_res) if args.gpu else cpu_configs()
    if args.gpu and args.interleaved:
        learned, bilinear = configs[0], configs[1]
        seconds = interleaved_step_times([learned, bilinear], warmup=args.warmup, steps=args.steps, device="cuda")
        flops = [forward_flops(c) for c in (learned, bilinear)]
        report = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "setting": "Swin-L 768->384, batch 8, bf16, ZeRO-2, gradient checkpointing, steps alternated",
            "steps": args.steps,
            "learned_step_ms": seconds[0] * 1000,
            "bilinear_step_ms": seconds[1] * 1000,
            "time_ratio": seconds[0] / seconds[1],
            "flops_ratio": flops[0] / flops[1],
        }
        print(json.dumps(report, indent=2))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        return 0
    if args.variant is not None:
        if args.gpu:
            device = torch.device("cuda", 0)
            torch.cuda.set_device(device)
            init_single_process("nccl")
        else:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            device = torch.device("cpu")
            init_single_process("gloo")
        result = measure(configs[args.variant], device=device, num_outputs=200, warmup=args.warmup, steps=args.steps)
        print("RESULT " + json.dumps(result))
        return 0
    results = [run_isolated(i, args) for i in range(len(configs))]
    print(f"{'backbone':<34} {'in→out':>9} {'resizer':>8} {'ckpt':>5} {'step ms':>8} {'img/s':>7} {'peak GiB':>8}")
    for r in results:
        peak = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "-"
        print(
            f"{r['backbone']:<34} {r['input']:>4}→{r['backbone_input']:<4} {r['resizer']:>8} "
            f"{str(r['grad_checkpointing']):>5} {r['step_ms']:>8.1f} {r['images_per_second']:>7.1f} {peak:>8}"
        )
    if args.full_res:
        small, full = results
        print(f"{full['backbone']}: full {full['backbone_input']} / {small['backbone_input']} step time = "
              f"{full['step_ms'] / small['step_ms']:.2f}, peak memory = {full['peak_memory_gib'] / small['peak_memory_gib']:.2f}")
    else:
        for learned, bilinear in zip(results[0::2], results[1::2]):
            if learned["resizer"] == "learned" and bilinear["resizer"] == "bilinear":
                print(f"{learned['backbone']}: learned / bilinear step time = {learned['step_ms'] / bilinear['step_ms']:.3f}")
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "device": torch.cuda.get_device_name(0) if args.gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
