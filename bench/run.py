"""Runs every benchmark and writes bench/results.md (the table) and bench/results.json (figures, machine, date).

    python -m bench                  # all, a few tens of minutes on 2 cores
    python -m bench --quick          # smaller settings, a few minutes
    python -m bench --only decode,train_step --out-dir /tmp/b   # a selection (no Ray without data_path, checkpoint)
    python -m bench --tune-report outputs/tune/asha_report.json # include ASHA's saved compute
    python -m bench --only data_path --update                 # rerun one, keep the other rows of results.json

Each row compares a figure with its limit or baseline measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row, machine  # noqa: E402

BENCHMARKS = ("data_path", "decode", "train_step", "zero_memory", "asha", "resizers", "checkpoint",
              "activation_memory", "elastic_resume")  # numbered 1-9
NOT_MEASURED_ASHA = "not measured (run jobs/tune_cub_resizer.py --demo first)"


def asha(tune_report: str | None) -> dict[str, Any]:
    """Benchmark 5: trial-epochs ASHA ran against the trial-epochs of running every trial to the end."""
    if not tune_report or not Path(tune_report).is_file():
        print(f"ASHA: {NOT_MEASURED_ASHA}")
        row = Row("5 ASHA saved compute", NOT_MEASURED_ASHA, "-", None, "report only", None)
        return {"figures": {"report": tune_report}, "rows": [row.to_dict()]}
    report = json.loads(Path(tune_report).read_text())
    run, full = int(report["trial_epochs_run"]), int(report["trial_epochs_full"])
    saved = 1 - run / full
    best = report.get("best_top1")
    best = f"{best:.3f}" if isinstance(best, (int, float)) else best
    print(f"ASHA: {run} of {full} trial-epochs run ({saved:.0%} saved); best top-1 {best}")
    row = Row("5 ASHA saved compute", f"{run} trial-epochs run (best top-1 {best})",
              f"{full} trial-epochs without early stopping", run / full, "report only", None)
    return {"figures": {"report": tune_report, **report, "saved_fraction": saved}, "rows": [row.to_dict()]}


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"`python -m bench{' --quick' if results['quick'] else ''}` on {info['date']}: {info['cpu']}, "
        f"{info['cores_available']} cores, {info['memory_gib']} GiB, GPU: {info['gpu'] or 'none'}; "
        f"load average {info['load_average_before']} before the run (the machine is shared, so every figure is a "
        f"ratio measured side by side in one run). torch {info['versions']['torch']}, ray {info['versions']['ray']}, "
        f"deepspeed {info['versions']['deepspeed']}.",
        "",
        "| benchmark | figure | limit / baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(f"| {row['benchmark']} | {row['figure']} | {row['baseline']} | {ratio} | {row['target']} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller settings: a few minutes")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--tune-report", default=None, help="JSON written by the Tune report (benchmark 5)")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent), help="where results.md/json go")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows and figures of benchmarks not selected from the existing results.json")
    parser.add_argument("--workdir", default=None, help="cache of demo images and shards (default: a temp folder)")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {list(BENCHMARKS)}")

    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "benchmarks": {}, "rows": [], "seconds": {},
                               "dates": {}}
    out_dir = Path(args.out_dir)
    if args.update and (out_dir / "results.json").is_file():
        previous = json.loads((out_dir / "results.json").read_text())
        kept = [name for name in previous["benchmarks"] if name not in selected]
        numbers = {str(BENCHMARKS.index(name) + 1) for name in kept}
        results["rows"] = [row for row in previous["rows"] if row["benchmark"].split()[0] in numbers]
        for key in ("benchmarks", "seconds", "dates"):
            results[key] = {name: previous.get(key, {}).get(name) for name in kept}
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in selected:
            started = time.perf_counter()
            if name == "data_path":
                from bench import bench_data_path
                out = bench_data_path.run(workdir, quick=args.quick)
            elif name == "decode":
                from bench import bench_decode
                out = bench_decode.run(workdir, quick=args.quick)
            elif name == "train_step":
                from bench import bench_train_step
                out = bench_train_step.run(quick=args.quick)
            elif name == "zero_memory":
                from bench import bench_zero_memory
                out = bench_zero_memory.run(quick=args.quick)
            elif name == "resizers":
                from bench import bench_resizers
                out = bench_resizers.run(quick=args.quick)
            elif name == "checkpoint":
                from bench import bench_checkpoint
                out = bench_checkpoint.run(workdir, quick=args.quick)
            elif name == "activation_memory":
                from bench import bench_activation_memory
                out = bench_activation_memory.run(quick=args.quick)
            elif name == "elastic_resume":
                from bench import bench_elastic_resume
                out = bench_elastic_resume.run(workdir, quick=args.quick)
            else:
                out = asha(args.tune_report)
            results["benchmarks"][name] = out["figures"]
            results["rows"] += out["rows"]
            results["seconds"][name] = round(time.perf_counter() - started, 1)
            results["dates"][name] = results["machine"]["date"]
    results["rows"].sort(key=lambda row: row["benchmark"].split()[0])  # stable: keeps each benchmark's order
    for row in results["rows"]:
        if row["ratio"] is not None and not (math.isfinite(row["ratio"]) and row["ratio"] > 0):
            raise RuntimeError(f"{row['benchmark']}: ratio {row['ratio']} is not a finite positive number")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown(results)
    (out_dir / "results.md").write_text(table)
    print(table)
    print(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
