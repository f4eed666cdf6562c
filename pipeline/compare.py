"""The report of a resizer comparison: statistics over seeds per arm, paired differences, figures.

    python -m pipeline.compare outputs/compare_resizers

reads the folder written by `pipeline.tune.run_comparison` (Tune's trial folders: params.json with
the arm and seed, result.json with one line per epoch) and writes into it:

- `comparison.md` and `comparison.json`: per arm, the final-epoch metric's mean ± std over seeds, a
  t-interval of the mean, the best epoch's metric, and the paired difference to the baseline arm
  (same seed: same data order and backbone init) with its t-interval; and from every trial's per-image
  outputs (`eval_samples.npz`, `pipeline.paired`), per seed the difference on the same images with
  McNemar's test (classification) and a paired bootstrap interval, and over seeds and images a
  hierarchical bootstrap interval of each arm's metric and of its difference: intervals that stay
  inside the metric's range;
- `accuracy_per_arm.png` (every seed and the mean with its interval), `learning_curves.png` (mean ±
  std band per arm over epochs), `resizer_grid_all.png` (the same images through every resizer),
  and `comparison.html` holding all of it.

The headline is the final epoch's metric: every arm gets the same budget, and picking each run's
best epoch on the evaluation split would favour the noisier arm. The best epoch is reported beside it.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.layout import CHECKPOINT_PREFIX, META_FILE, WEIGHTS_FILE, trial_run_name
from pipeline.report import Trial, load_trials
from pipeline.storage import LocalCopy, local_copy
from pipeline.resizer import resizer_kind

REPORT_FILES = ("comparison.md", "comparison.json", "accuracy_per_arm.png", "learning_curves.png", "comparison.html")


# ---------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Estimate:
    """Mean of a sample with its spread and a Student-t interval of the mean.

    Attributes:
        n: sample size.
        mean: sample mean.
        std: sample standard deviation (ddof=1); nan for n < 2.
        low: lower end of the t-interval of the mean; nan for n < 2.
        high: upper end.
        confidence: the interval's level.
    """

    n: int
    mean: float
    std: float
    low: float
    high: float
    confidence: float


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean ± t(1 - (1 - confidence) / 2, n - 1) x std / sqrt(n) of independent values."""
    from scipy import stats

    n = len(values)
    if n == 0:
        raise ValueError("t_interval of no values")
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(n, mean, math.nan, math.nan, math.nan, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Estimate(n, mean, std, mean - half, mean + half, confidence)


def paired_difference(values: dict[Any, float], baseline: dict[Any, float], confidence: float = 0.95) -> Estimate | None:
    """t-interval of the per-seed differences `values[s] - baseline[s]` over the seeds both have.

    Pairing removes what the two arms share per seed (data order, backbone init), so the interval
    is narrower than one from two independent samples when the seeds matter.
    """
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    return t_interval([values[s] - baseline[s] for s in seeds], confidence)


# ---------------------------------------------------------------- reading the experiment

def arm_runs(trials: list[Trial], metric: str) -> dict[str, dict[int, Trial]]:
    """Trials by arm and seed, arms in the order they first appear."""
    runs: dict[str, dict[int, Trial]] = {}
    for trial in trials:
        if "arm" in trial.params and trial.curve(metric):
            runs.setdefault(trial.params["arm"], {})[int(trial.params.get("run.seed", 0))] = trial
    return runs


def summarize(
    runs: dict[str, dict[int, Trial]],
    *,
    metric: str,
    baseline: str,
    epochs: int,
    confidence: float = 0.95,
    kinds: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Per arm: final and best metric over seeds, and the paired difference to `baseline`.

    Only runs that reached `epochs` count for the final metric; unfinished ones are listed.
    `kinds` gives each arm's `resizer.kind` (the figures style learned and fixed arms apart).
    """
    final = {
        arm: {seed: t.curve(metric)[-1][1] for seed, t in by_seed.items() if t.curve(metric)[-1][0] >= epochs}
        for arm, by_seed in runs.items()
    }
    rows = []
    for arm, by_seed in runs.items():
        row: dict[str, Any] = {"arm": arm, "kind": (kinds or {}).get(arm), "seeds": sorted(final[arm]), "final": final[arm]}
        row["unfinished_seeds"] = sorted(set(by_seed) - set(final[arm]))
        row["final_estimate"] = asdict(t_interval(list(final[arm].values()), confidence)) if final[arm] else None
        best = [t.best(metric) for t in by_seed.values()]
        row["best_estimate"] = asdict(t_interval(best, confidence))
        difference = paired_difference(final[arm], final.get(baseline, {}), confidence) if arm != baseline else None
        row["difference_to_baseline"] = asdict(difference) if difference else None
        rows.append(row)
    return {"metric": metric, "baseline": baseline, "epochs": epochs, "confidence": confidence, "arms": rows}


def paired_evidence(
    directory: Path, runs: dict[str, dict[int, Trial]], summary: dict[str, Any], task: Any, *, replicates: int
) -> None:
    """Adds to each row of `summary` the hierarchical bootstrap interval of its final metric (`final_bootstrap`)
    and, for arms other than the baseline, the per-image paired evidence (`paired`, see `pipeline.paired`).
    Uses the trials whose kept per-sample outputs are of the final epoch; others are left out."""
    from pipeline.checkpoint import read_eval_samples
    from pipeline.paired import arm_interval, compare_arm

    metric, epochs, confidence = summary["metric"], summary["epochs"], summary["confidence"]
    samples: dict[str, dict[int, dict[str, Any]]] = {}
    for arm, by_seed in runs.items():
        for seed, trial in by_seed.items():
            outputs = read_eval_samples(str(directory / trial_run_name(trial.trial_id)))
            if outputs is not None and int(outputs["epoch"]) == epochs:
                samples.setdefault(arm, {})[seed] = outputs
    baseline = samples.get(summary["baseline"], {})
    for row in summary["arms"]:
        mine = samples.get(row["arm"], {})
        row["final_bootstrap"] = arm_interval(task, mine, metric, replicates=replicates, confidence=confidence) if mine else None
        if row["arm"] != summary["baseline"] and mine and baseline:
            row["paired"] = compare_arm(task, mine, baseline, metric, replicates=replicates, confidence=confidence)
        else:
            row["paired"] = None
    summary["bootstrap_replicates"] = replicates


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(summary: dict[str, Any]) -> str:
    """The comparison as a Markdown table (also readable as plain text)."""
    metric, baseline, level = summary["metric"], summary["baseline"], f"{summary['confidence']:.0%}"
    lines = [
        f"| arm | seeds | final {metric} mean ± std | {level} CI | best-epoch {metric} mean ± std | "
        f"difference to {baseline} (paired) | {level} CI of the difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["arms"]:
        est, best, diff = row["final_estimate"] or {}, row["best_estimate"], row["difference_to_baseline"] or {}
        seeds = f"{len(row['seeds'])}" + (f" (+{len(row['unfinished_seeds'])} unfinished)" if row["unfinished_seeds"] else "")
        lines.append(
            f"| {row['arm']} | {seeds} | {_fmt(est.get('mean'))} ± {_fmt(est.get('std'))} | "
            f"[{_fmt(est.get('low'))}, {_fmt(est.get('high'))}] | {_fmt(best['mean'])} ± {_fmt(best['std'])} | "
            + (f"{diff['mean']:+.3f} ± {_fmt(diff['std'])} | [{_fmt(diff['low'])}, {_fmt(diff['high'])}] |"
               if diff else ("baseline | |" if row["arm"] == baseline else "- | - |"))
        )
    lines.append(
        f"\nfinal = {metric} after epoch {summary['epochs']} (the budget-matched number); std over seeds (ddof=1); "
        f"CI = Student-t interval of the mean; the difference is per seed, arm minus {baseline}."
    )
    paired = [row for row in summary["arms"] if row.get("final_bootstrap")]
    if paired:
        lines += [
            "",
            f"| arm | final {metric}, {level} CI (seeds x images) | per seed on the same images: difference to {baseline} "
            f"[{level} CI]{', McNemar' if _has_mcnemar(paired) else ''} | difference, {level} CI (seeds x images) |",
            "|---|---|---|---|",
        ]
        for row in paired:
            own, evidence = row["final_bootstrap"], row.get("paired") or {}
            per_seed = "; ".join(_seed_text(s) for s in evidence.get("per_seed", [])) or ("baseline" if row["arm"] == baseline else "-")
            diff = evidence.get("difference")
            lines.append(
                f"| {row['arm']} | {_fmt(own['mean'])} [{_fmt(own['low'])}, {_fmt(own['high'])}] | {per_seed} | "
                + (f"{diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] |" if diff else "- |")
            )
        lines.append(
            f"\nseeds x images = hierarchical bootstrap ({summary['bootstrap_replicates']} replicates: seeds resampled, then "
            "each drawn seed's evaluation images, the same images for both arms), percentile intervals; McNemar = "
            "images right in the arm only / in the baseline only, exact p."
        )
    return "\n".join(lines) + "\n"


def _has_mcnemar(rows: list[dict[str, Any]]) -> bool:
    return any("mcnemar" in s for row in rows for s in (row.get("paired") or {}).get("per_seed", []))


def _seed_text(seed: dict[str, Any]) -> str:
    text = f"s{seed['seed']}: {seed['mean']:+.3f} [{seed['low']:+.3f}, {seed['high']:+.3f}]"
    if "mcnemar" in seed:
        m = seed["mcnemar"]
        text += f", {m['arm_only']}/{m['baseline_only']} p={m['p']:.2g}"
    return text


def verdicts(summary: dict[str, Any]) -> list[str]:
    """One sentence per arm: does it beat the baseline beyond the interval, and beyond the spread?"""
    out = []
    by_arm = {r["arm"]: r for r in summary["arms"]}
    base = by_arm.get(summary["baseline"], {}).get("final_estimate")
    for row in summary["arms"]:
        diff = row["difference_to_baseline"]
        if not diff or not base or not row["final_estimate"]:
            continue
        pooled = (row.get("paired") or {}).get("difference")
        if pooled:  # per-image evidence: the seeds x images interval decides
            word = "beats" if pooled["low"] > 0 else "loses to" if pooled["high"] < 0 else "is not distinguishable from"
            seeds = (row.get("paired") or {}).get("per_seed", [])
            significant = [s for s in seeds if "mcnemar" in s and s["mcnemar"]["p"] < 0.05]
            tests = f"; McNemar p < 0.05 in {len(significant)} of {len(seeds)} seeds" if any("mcnemar" in s for s in seeds) else ""
            out.append(f"{row['arm']} {word} {summary['baseline']}: {pooled['mean']:+.3f} {summary['metric']} "
                       f"({summary['confidence']:.0%} CI [{pooled['low']:+.3f}, {pooled['high']:+.3f}] over seeds and images{tests})")
            continue
        spread = max(row["final_estimate"]["std"], base["std"])
        if diff["n"] < 2:
            word = "cannot be judged with one seed"
        elif diff["low"] > 0:
            word = "beats"
        elif diff["high"] < 0:
            word = "loses to"
        else:
            word = "is not distinguishable from"
        margin = "" if math.isnan(spread) else (
            f"; the gap is {abs(diff['mean']) / spread:.1f}x the larger seed-to-seed std ({spread:.3f})" if spread > 0 else ""
        )
        out.append(f"{row['arm']} {word} {summary['baseline']}: {diff['mean']:+.3f} {summary['metric']} "
                   f"({summary['confidence']:.0%} CI [{_fmt(diff['low'])}, {_fmt(diff['high'])}]){margin}")
    return out


# ---------------------------------------------------------------- figures

def _learned(kind: str | None) -> bool:
    return kind is not None and resizer_kind(kind).learned


def _color(kind: str | None, index: int) -> str:
    return resizer_kind(kind).color if kind is not None else f"C{index}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_arms(summary: dict[str, Any], path: Path) -> Path:
    """Every seed's final metric per arm, and the mean with its t-interval."""
    plt = _pyplot()
    rows = [r for r in summary["arms"] if r["final_estimate"]]
    fig, ax = plt.subplots(figsize=(1.6 * max(3, len(rows)) + 1, 4))
    for x, row in enumerate(rows):
        est = row["final_estimate"]
        ax.scatter([x + 0.15] * len(row["final"]), list(row["final"].values()), color="gray", s=14, zorder=3)
        error = None if math.isnan(est["low"]) else [[est["mean"] - est["low"]], [est["high"] - est["mean"]]]
        ax.errorbar([x], [est["mean"]], yerr=error, fmt="o", capsize=6, color=resizer_kind(row["kind"]).color if row["kind"] else "C0")
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=20)
    ax.set_ylabel(f"final {summary['metric']}")
    ax.set_title(f"{summary['metric']} after {summary['epochs']} epochs: mean and {summary['confidence']:.0%} CI (gray: seeds)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_learning_curves(runs: dict[str, dict[int, Trial]], metric: str, path: Path, kinds: dict[str, str] | None = None) -> Path:
    """Mean ± std over seeds of the metric per epoch, one band per arm (solid: learned resizers)."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, (arm, by_seed) in enumerate(runs.items()):
        curves = [dict(t.curve(metric)) for t in by_seed.values()]
        epochs = sorted(set().union(*curves))
        values = [[c[e] for c in curves if e in c] for e in epochs]
        mean = np.array([np.mean(v) for v in values])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
        kind = (kinds or {}).get(arm)
        style, color = ("-" if _learned(kind) else "--"), f"C{index}"
        ax.plot(epochs, mean, style, marker="o", markersize=3, color=color, label=f"{arm} ({len(curves)} seeds)")
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("mean ± std over seeds (dashed: fixed resizers)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latest_checkpoint(run_directory: Path) -> Path | None:
    """The last epoch's checkpoint folder of a Train run (the model whose final metric is reported); a
    complete one has `meta.json`, written beside the weights."""
    folders = sorted(p for p in run_directory.glob(f"{CHECKPOINT_PREFIX}*") if (p / META_FILE).is_file())
    return folders[-1] if folders else None


def grid_all_resizers(local: LocalCopy, summary: dict[str, Any], runs: dict[str, dict[int, Trial]], job: Any, *, count: int = 4) -> Path | None:
    """`resizer_grid_all.png`: the same evaluation crops through every arm's resizer. Learned arms
    use the final checkpoint of their best seed; fixed arms are built from their kind."""
    from pipeline.resizer import build_resizer
    from pipeline.manifest import read_manifest, shard_urls
    from pipeline.resizer_grid import load_model, resizer_columns_grid, sample_images

    by_arm = {r["arm"]: r for r in summary["arms"]}
    reference, columns = None, []
    for arm, by_seed in runs.items():
        finals = by_arm[arm]["final"] or {s: t.curve(summary["metric"])[-1][1] for s, t in by_seed.items()}
        seed = max(finals, key=finals.get)
        checkpoint = latest_checkpoint(local.path / trial_run_name(by_seed[seed].trial_id))
        if checkpoint is None:
            continue
        model, saved = load_model(str(local.fetch((checkpoint / WEIGHTS_FILE).relative_to(local.path))), job)
        reference = reference or (model, saved)
        # A fixed arm's resizer to the model's own input size (the full-resolution arm's is the identity).
        resizer = model.resizer if resizer_kind(saved.resizer.kind).learned else build_resizer(saved.resizer, (model.input_size,) * 2)
        columns.append((f"{arm} (seed {seed}) {model.input_size}px", resizer.float(), saved.resizer.kind))
    if reference is None:
        return None
    model, saved = reference
    urls = shard_urls(saved.data.path, read_manifest(saved.data.path), saved.data.eval_split)
    crops = sample_images(saved, urls=urls, images=[], count=count)
    if not crops:
        return None
    return resizer_columns_grid(model, crops, columns, local.path / "resizer_grid_all.png", difference_to=summary["baseline"])


def _html_block(block: str) -> str:
    """A Markdown table as an HTML table; any other paragraph as a paragraph."""
    rows = [r for r in block.splitlines() if r.startswith("|") and not r.startswith("|---")]
    if not rows:
        return f"<p>{html.escape(block)}</p>"
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    header = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f"<table><tr>{header}</tr>\n{body}</table>"


def _html(summary: dict[str, Any], table: str, lines: list[str], images: list[Path], title: str) -> str:
    blocks = "\n".join(_html_block(block.strip()) for block in table.split("\n\n") if block.strip())
    pictures = "\n".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in images
    )
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}img{{max-width:100%;display:block;margin:1em 0}}</style>
</head><body><h1>{html.escape(title)}</h1>
{blocks}
<ul>{notes}</ul>
{pictures}
</body></html>
"""


def write_comparison(directory: str | Path, *, grid: bool = True) -> dict[str, Any]:
    """Writes the report files into a comparison folder (local or a URI) and returns the summary.

    Raises:
        ValueError: the folder has no comparison job file or no finished epoch of any arm.
        FileNotFoundError: no such folder.
    """
    with local_copy(directory) as local:
        summary = _write_comparison(local, grid=grid)
        summary["report"] = local.where(local.path / "comparison.html")
    return summary


def _write_comparison(local: LocalCopy, *, grid: bool) -> dict[str, Any]:
    from pipeline.config import CompareJobConfig
    from pipeline.tasks import get_task
    from pipeline.tune import comparison_arms, read_experiment

    directory = local.path
    job = read_experiment(str(directory), CompareJobConfig)
    metric = get_task(job.task).target_metric
    runs = arm_runs(load_trials(directory), metric)
    if not runs:
        raise ValueError(f"{local.source}: no trial with an arm and a finished epoch yet")
    kinds = {arm: values["resizer.kind"] for arm, values in comparison_arms(job).items()}
    summary = summarize(
        runs, metric=metric, baseline=job.compare.baseline, epochs=job.optim.epochs, confidence=job.compare.confidence, kinds=kinds
    )
    paired_evidence(directory, runs, summary, get_task(job.task), replicates=job.compare.bootstrap)
    table = format_table(summary)
    lines = verdicts(summary)
    summary["verdicts"] = lines
    images = [plot_arms(summary, directory / "accuracy_per_arm.png"), plot_learning_curves(runs, metric, directory / "learning_curves.png", kinds)]
    if grid:
        picture = grid_all_resizers(local, summary, runs, job)
        if picture is not None:
            images.append(picture)
    (directory / "comparison.md").write_text(f"# Comparison {local.name}\n\n{table}\n" + "".join(f"- {v}\n" for v in lines))
    (directory / "comparison.json").write_text(json.dumps(summary, indent=2, default=str))
    (directory / "comparison.html").write_text(_html(summary, table, lines, images, f"Comparison {local.name}"))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="a comparison folder: <storage>/<name> of jobs/compare_resizers.py")
    parser.add_argument("--no-grid", action="store_true", help="skip resizer_grid_all.png (needs the checkpoints)")
    args = parser.parse_args(argv)
    try:
        summary = write_comparison(args.directory, grid=not args.no_grid)
    except (ValueError, OSError) as err:  # OSError: a missing folder, a bucket refused or unreachable
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(summary))
    print("\n".join(summary["verdicts"]))
    print(f"report: {summary['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
