"""The Swin-L + learned resizer training step at 768 → 384 near the hardware, on one GPU.

The step is the one a Train worker runs: the engine `pipeline.train.setup_model_and_engine` builds (DeepSpeed
ZeRO-2, bf16, torch's fused AdamW, `optim.fused`), uint8 batches in, forward, backward, optimizer step. For each
of gradient checkpointing off and on:

1. memory: the peak at two small batches (eager), fitted as a line, gives the largest batch that fits in
   `MEMORY_SHARE` of the GPU's memory; a real step at that batch checks it (a smaller one is tried on OOM);
2. eager throughput over batches up to that largest one;
3. compiled (`model.compile`: DeepSpeed's `engine.compile()`, inductor) at the largest power of two that fits
   (at most `COMPILED_BATCH_CAP`), with the seconds the first steps spent compiling.

With `--deadline-s`, the eager sweep skips its largest batches when the compiled run would not fit before the
deadline (checkpointing lets a batch of several hundred fit: each step takes seconds).

Beside them: the GPU's bf16 matrix rate measured in the same run (8192³ products) and its datasheet peak, and
AdamW over as many fp32 parameters as the model has, in ZeRO's flat groups: fused against foreach.

Throughput is images/s per GPU; model TFLOP/s = images/s x 3 x forward FLOPs per image (FlopCounterMode; a
checkpointed step's recomputed forward is not counted). Target: at least 200 img/s per GPU.

    python bench/bench_peak_step.py --out bench/results/train_step_peak_h200.json     # one GPU, both settings
    python bench/bench_peak_step.py --checkpointing off --out ...                     # one setting (~4 min)
    python bench/bench_peak_step.py --smoke --out /tmp/peak.json                      # the same code on a CPU

`--smoke` runs a tiny ResNet on the CPU (no memory search, no compile) so the tests keep this code working.
The JSON is rewritten after every phase: a run cut short keeps what it measured. `bench/device_check.sh` runs
it on the device machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.bench_train_step import init_single_process  # noqa: E402
from pipeline.config import DataConfig, DeepSpeedConfig, JobConfig, ModelConfig, OptimConfig, ResizerConfig  # noqa: E402

TARGET_IMAGES_PER_SECOND = 200.0
MEMORY_SHARE = 0.92  # of the GPU's memory a batch may plan to use (the allocator's reserve and fragmentation)
PROBE_BATCHES = (8, 16)
SWEEP_BATCHES = (8, 32, 64, 128, 256, 512)
COMPILED_BATCH_CAP = 256  # compiling at the largest power of two that fits, at most this: throughput has long flattened
COMPILE_RESERVE_S = 150.0  # with --deadline-s: the eager sweep stops when less than this is left for the compiled run
NUM_OUTPUTS = 200  # CUB's classes
# Dense bf16 tensor-core peaks from the vendors' datasheets (SXM parts), TFLOP/s: a lead beside the measured rate.
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "B200": 2250.0}


def recipe_config(grad_checkpointing: bool) -> JobConfig:
    """The flagship step: Swin-L at 384 behind the learned resizer on 768 crops, bf16, ZeRO-2."""
    return JobConfig(
        resizer=ResizerConfig(kind="learned"),
        model=ModelConfig(backbone="swin_large_patch4_window12_384", pretrained=False, grad_checkpointing=grad_checkpointing),
        data=DataConfig(crop_size=768, resize_size=1020, batch_size=8),
        optim=OptimConfig(lr=5e-6, fused=True),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="bf16"),
    )


def smoke_config(grad_checkpointing: bool) -> JobConfig:
    """A tiny stand-in for the CPU: the same engine and loop in seconds."""
    return JobConfig(
        resizer=ResizerConfig(kind="learned", num_filters=4),
        model=ModelConfig(backbone="resnet18", pretrained=False, img_size=32, grad_checkpointing=grad_checkpointing),
        data=DataConfig(crop_size=64, resize_size=None, batch_size=2),
        optim=OptimConfig(lr=5e-6, fused=True),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32"),
    )


# ---------------------------------------------------------------- pure pieces

def largest_fitting_batch(peaks_gib: dict[int, float], capacity_gib: float, share: float = MEMORY_SHARE) -> int:
    """The largest batch whose peak memory, on the line through two measured (batch, peak) points, stays
    within `share` of `capacity_gib`; at least 1.

    >>> largest_fitting_batch({8: 10.0, 16: 14.0}, 80.0)   # 6 GiB fixed + 0.5 GiB per image
    135
    """
    (b1, p1), (b2, p2) = sorted(peaks_gib.items())[:2]
    per_image = (p2 - p1) / (b2 - b1)
    fixed = p1 - per_image * b1
    if per_image <= 0:
        raise ValueError(f"peak memory did not grow with the batch ({peaks_gib}): cannot extrapolate")
    return max(1, math.floor((share * capacity_gib - fixed) / per_image))


def model_tflops(images_per_second: float, forward_flops_per_image: float) -> float:
    """Useful training FLOP/s, in TFLOP/s: forward + backward = 3 x forward per image."""
    return images_per_second * 3 * forward_flops_per_image / 1e12


def datasheet_peak(device_name: str) -> float | None:
    return next((peak for part, peak in DATASHEET_BF16_TFLOPS.items() if part in device_name), None)


def power_of_two_at_most(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


# ---------------------------------------------------------------- measurements

def sync(device: torch.device) -> None:
    """Waits for the device's queued work, so a host clock times it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class Step:
    """One engine for a config and a step on random uint8 batches of any size."""

    def __init__(self, cfg: JobConfig, device: torch.device) -> None:
        from pipeline.train import setup_model_and_engine

        torch.manual_seed(0)
        self.cfg, self.device = cfg, device
        self.engine = setup_model_and_engine(cfg, num_outputs=NUM_OUTPUTS, world_size=1, warmup_steps=10, total_steps=10_000)
        self.batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: int) -> torch.Tensor:
        if batch not in self.batches:
            self.batches.clear()  # one batch size's tensors at a time
            size = self.cfg.data.crop_size
            self.batches[batch] = (
                torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=self.device),
                torch.randint(0, NUM_OUTPUTS, (batch,), device=self.device),
            )
        pixels, labels = self.batches[batch]
        loss = torch.nn.functional.cross_entropy(self.engine(pixels).float(), labels)
        self.engine.backward(loss)
        self.engine.step()
        return loss

    def timed(self, batch: int, *, warmup: int, steps: int) -> dict[str, float]:
        """Median step time over `steps` after `warmup`; img/s from it; the peak memory during them (GiB)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(warmup):
            self(batch)
        sync(self.device)
        warmup_s = time.perf_counter() - started
        seconds = []
        for _ in range(steps):
            begin = time.perf_counter()
            loss = self(batch)
            sync(self.device)
            seconds.append(time.perf_counter() - begin)
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError(f"non-finite loss at batch {batch}")
        median = sorted(seconds)[len(seconds) // 2]
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
        return {"batch": batch, "step_ms": median * 1000, "images_per_second": batch / median,
                "peak_memory_gib": peak, "warmup_s": warmup_s}

    def forward_flops(self) -> int:
        """FLOPs of one image's forward pass through resizer and backbone (FlopCounterMode)."""
        from torch.utils.flop_counter import FlopCounterMode

        size = self.cfg.data.crop_size
        pixels = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=self.device)
        counter = FlopCounterMode(display=False)
        module = self.engine.module
        module.eval()
        with torch.no_grad(), counter:
            module(pixels)
        module.train()
        return counter.get_total_flops()

    def close(self) -> None:
        self.batches.clear()
        del self.engine
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """Mean bf16 matrix-product rate of `repeats` products after 3 warm-ups, random inputs."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def adamw_ms(num_params: int, device: torch.device, repeats: int = 10) -> dict[str, float]:
    """Median ms of an AdamW step over `num_params` fp32 parameters in 4 flat groups (ZeRO-2's layout:
    decay / no decay for backbone and resizer), fused against foreach, alternated."""
    times: dict[str, list[float]] = {"fused": [], "foreach": []}
    optimizers = {}
    for kind in times:
        params = [torch.nn.Parameter(torch.randn(num_params // 4, device=device)) for _ in range(4)]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizers[kind] = torch.optim.AdamW(params, lr=1e-4, fused=kind == "fused", foreach=None if kind == "fused" else True)
        optimizers[kind].step()  # state allocated
    for _ in range(repeats):
        for kind, optimizer in optimizers.items():
            sync(device)
            begin = time.perf_counter()
            optimizer.step()
            sync(device)
            times[kind].append(time.perf_counter() - begin)
    return {kind: sorted(t)[len(t) // 2] * 1000 for kind, t in times.items()}


def count_params(cfg: JobConfig) -> int:
    """Parameters of the model (resizer and backbone), built on the meta device: no memory, no init."""
    from pipeline.model import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg.model, cfg.resizer, NUM_OUTPUTS).parameters())


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def search_memory(cfg: JobConfig, device: torch.device, capacity_gib: float, log: list[str]) -> tuple[Step, dict[str, Any]]:
    """Peaks at `PROBE_BATCHES`, the line's largest batch, checked by two real steps (15% smaller on OOM,
    on a fresh engine, up to 4 tries). Returns the engine that ran the largest batch, and the figures."""
    step = Step(cfg, device)
    peaks = {b: step.timed(b, warmup=1, steps=2)["peak_memory_gib"] for b in PROBE_BATCHES}
    predicted = largest_fitting_batch(peaks, capacity_gib)
    tries, batch = [], predicted
    for _ in range(4):
        try:
            figures = step.timed(batch, warmup=1, steps=1)
            tries.append({"batch": batch, "fits": True, "peak_memory_gib": figures["peak_memory_gib"]})
            break
        except Exception as err:  # noqa: BLE001 - only an out-of-memory is expected here
            if not is_oom(err):
                raise
        # here, after the except block: its traceback's frames, and the tensors they hold, are released
        tries.append({"batch": batch, "fits": False})
        log.append(f"batch {batch}: out of memory; trying {int(batch * 0.85)} on a fresh engine")
        step.close()
        step = Step(cfg, device)
        batch = int(batch * 0.85)
    fitted = [t["batch"] for t in tries if t["fits"]]
    return step, {"probe_peaks_gib": peaks, "predicted_largest_batch": predicted, "tries": tries,
                  "largest_batch": fitted[-1] if fitted else None, "capacity_gib": capacity_gib}


def measure_setting(
    cfg: JobConfig, device: torch.device, *, smoke: bool, compile_model: bool, report: dict[str, Any], out: Path,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Memory search, eager sweep and compiled run for one config; `report` is rewritten to `out` after each.
    `deadline` (time.monotonic()): the sweep's larger batches are skipped to leave the compiled run its time."""
    name = "checkpointing" if cfg.model.grad_checkpointing else "no_checkpointing"
    result: dict[str, Any] = {"grad_checkpointing": cfg.model.grad_checkpointing, "log": []}
    report["settings"][name] = result
    if smoke:
        step, largest = Step(cfg, device), 4
        result["memory"] = None
    else:
        capacity = torch.cuda.mem_get_info(device)[1] / 2**30
        step, result["memory"] = search_memory(cfg, device, capacity, result["log"])
        largest = result["memory"]["largest_batch"]
        write(report, out)
    if largest is None:
        result["log"].append("no batch fitted")
        step.close()
        return result
    result["forward_gflops_per_image"] = step.forward_flops() / 1e9
    sweep = sorted({b for b in SWEEP_BATCHES if b <= largest} | {largest}) if not smoke else [2, largest]
    result["eager"] = []
    for batch in sweep:
        reserve = COMPILE_RESERVE_S if compile_model else 0.0
        if deadline is not None and time.monotonic() > deadline - reserve:
            result["log"].append(f"eager sweep stopped before batch {batch}: {reserve:.0f} s kept for what follows")
            print(result["log"][-1], flush=True)
            break
        figures = guarded(step.timed, batch, warmup=1 if smoke else 2, steps=2 if smoke else 4, log=result["log"])
        if figures is None:
            break  # the larger batches would not fit either
        figures["model_tflops"] = model_tflops(figures["images_per_second"], result["forward_gflops_per_image"] * 1e9)
        result["eager"].append(figures)
        print(f"{name} eager batch {batch}: {figures['step_ms']:.0f} ms, {figures['images_per_second']:.1f} img/s, "
              f"{figures['model_tflops']:.0f} TFLOP/s, peak {figures['peak_memory_gib'] or 0:.1f} GiB", flush=True)
        write(report, out)
    if compile_model:
        batch = min(power_of_two_at_most(largest), COMPILED_BATCH_CAP)
        step.engine.compile()
        # the first steps compile forward and backward; a compiler error is logged, not fatal to the other setting
        figures = guarded(step.timed, batch, warmup=3, steps=2 if smoke else 8, log=result["log"], any_error=True)
        if figures is not None:
            figures["model_tflops"] = model_tflops(figures["images_per_second"], result["forward_gflops_per_image"] * 1e9)
            result["compiled"] = figures
            print(f"{name} compiled batch {batch}: {figures['step_ms']:.0f} ms, {figures['images_per_second']:.1f} img/s, "
                  f"{figures['model_tflops']:.0f} TFLOP/s (compiling and warm-up {figures['warmup_s']:.0f} s)", flush=True)
    write(report, out)  # with what the sweep logged when it stopped
    step.close()
    return result


def guarded(timed: Any, batch: int, *, warmup: int, steps: int, log: list[str], any_error: bool = False) -> dict[str, Any] | None:
    """`timed(batch, ...)`, or None with the reason in `log` on an out-of-memory (or, with `any_error`, any error)."""
    try:
        return timed(batch, warmup=warmup, steps=steps)
    except Exception as err:  # noqa: BLE001 - recorded in the JSON and printed; the run goes on
        if not (any_error or is_oom(err)):
            raise
        reason = f"batch {batch}: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    log.append(reason)
    print(reason, flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # after the except block: the traceback's tensors are released
    return None


def best(report: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest measured step of any setting and mode."""
    candidates = [{**figures, "setting": name, "mode": mode}
                  for name, result in report["settings"].items()
                  for mode, runs in (("eager", result.get("eager", [])), ("compiled", [result["compiled"]] if "compiled" in result else []))
                  for figures in runs]
    return max(candidates, key=lambda f: f["images_per_second"], default=None)


def write(report: dict[str, Any], out: Path) -> None:
    report["best"] = best(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    partial.write_text(json.dumps(report, indent=2))
    partial.replace(out)


RESULTS = Path(__file__).resolve().parent / "results"
NOT_MEASURED = "not measured (no GPU lent yet: bench/device_check.sh step-off,step-on on one)"


def stored_rows(results: Path = RESULTS) -> list[Any]:
    """`python -m bench`'s rows for this benchmark: the fastest step in the stored GPU runs
    (`train_step_peak*.json`, one file per setting or both), against the 200 img/s target; and the
    fused AdamW against foreach on that GPU."""
    from bench.common import Row

    setting = "3 train step near the hardware: Swin-L 768→384 + learned resizer, bf16 ZeRO-2, one GPU"
    reports = [json.loads(path.read_text()) for path in sorted(results.glob("train_step_peak*.json"))]
    reports = [r for r in reports if not r.get("smoke")]
    tops = [{**r["best"], "report": r} for r in reports if r.get("best")]
    if not tops:
        return [Row(setting, NOT_MEASURED, f"target {TARGET_IMAGES_PER_SECOND:.0f} img/s", None,
                    f">= {TARGET_IMAGES_PER_SECOND:.0f} img/s per GPU", None)]
    top = max(tops, key=lambda t: t["images_per_second"])
    report = top["report"]
    peak = report["bf16_tflops"]["measured"]
    mode = f"{top['mode']}, {'with' if top['setting'] == 'checkpointing' else 'without'} checkpointing, batch {top['batch']}"
    rows = [Row(f"{setting} ({report['device']}, stored {report['date'][:10]})",
                f"{top['images_per_second']:.1f} img/s ({mode}); {top['model_tflops']:.0f} model TFLOP/s = "
                f"{top['model_tflops'] / peak:.0%} of the measured {peak:.0f} TFLOP/s bf16",
                f"target {TARGET_IMAGES_PER_SECOND:.0f} img/s", top["images_per_second"] / TARGET_IMAGES_PER_SECOND,
                f">= {TARGET_IMAGES_PER_SECOND:.0f} img/s per GPU", top["images_per_second"] >= TARGET_IMAGES_PER_SECOND)]
    adamw = report["adamw_ms"]
    rows.append(Row(f"3 optimizer step, AdamW over {adamw['num_params'] / 1e6:.0f} M fp32 parameters in 4 flat groups "
                    f"({report['device']}, stored {report['date'][:10]})",
                    f"fused {adamw['fused']:.2f} ms", f"foreach {adamw['foreach']:.2f} ms",
                    adamw["fused"] / adamw["foreach"], "fused faster (< 1x)", adamw["fused"] < adamw["foreach"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON to write (rewritten after every phase)")
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--smoke", action="store_true", help="a tiny ResNet on the CPU: the code path, not figures")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help=f"finish within this many seconds: the eager sweep leaves {COMPILE_RESERVE_S:.0f} s for the compiled run")
    args = parser.parse_args(argv)
    deadline = None if args.deadline_s is None else time.monotonic() + args.deadline_s

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        print("bench_peak_step: no CUDA GPU here; run it on one, or pass --smoke for the CPU code path", file=sys.stderr)
        return 2
    if smoke:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device = torch.device("cpu")
        init_single_process("gloo")
    else:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        init_single_process("nccl")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    build = smoke_config if smoke else recipe_config
    out = Path(args.out)
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": name,
        "smoke": smoke,
        "torch": torch.__version__,
        "setting": f"{'tiny ResNet-18 64→32 smoke run' if smoke else 'Swin-L 768→384 + learned resizer'}, "
                   f"{build(False).deepspeed.precision}, ZeRO-{build(False).deepspeed.zero_stage}, fused AdamW",
        "target_images_per_second": TARGET_IMAGES_PER_SECOND,
        "bf16_tflops": {"measured": matmul_tflops(device, size=512 if smoke else 8192), "datasheet": datasheet_peak(name)},
        "settings": {},
    }
    print(f"{name}: bf16 matrix products at {report['bf16_tflops']['measured']:.0f} TFLOP/s "
          f"(datasheet {report['bf16_tflops']['datasheet']})", flush=True)
    num_params = count_params(build(False))
    report["adamw_ms"] = {"num_params": num_params, **adamw_ms(num_params, device)}
    print(f"AdamW over {num_params / 1e6:.0f} M fp32 parameters: fused {report['adamw_ms']['fused']:.1f} ms, "
          f"foreach {report['adamw_ms']['foreach']:.1f} ms", flush=True)
    write(report, out)
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    for on in checkpointing:
        measure_setting(build(on), device, smoke=smoke, compile_model=not args.no_compile and not smoke, report=report, out=out,
                        deadline=deadline)
    top = report["best"]
    if top is not None:
        peak = report["bf16_tflops"]["measured"]
        print(f"best: {top['setting']} {top['mode']} batch {top['batch']}: {top['images_per_second']:.1f} img/s "
              f"(target {TARGET_IMAGES_PER_SECOND:.0f}), {top['model_tflops']:.0f} model TFLOP/s = "
              f"{top['model_tflops'] / peak:.0%} of the measured bf16 rate")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
