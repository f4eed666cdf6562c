"""Reports of a Tune search folder: a table of trials, the best config, curves, and ASHA's savings.

    python -m pipeline.report outputs/tune_cub_resizer

writes into the folder: `report.html` (self-contained: table + embedded PNGs), `curves.png`
(validation metric per epoch per trial), `hyperparameters.png` (best metric against each searched
hyperparameter), `trials.csv`, and `tune_summary.json` (trial-epochs run vs. a full run of every
trial, best config) which `python -m bench` reads.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.layout import PARAMS_FILE, RESULT_FILE, TRIAL_DIR_PREFIX
from pipeline.resizer import LEARNED_KINDS, resizer_kind


@dataclass
class Trial:
    """One trial of a search, read back from its folder."""

    trial_id: str
    params: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    status: str = "UNKNOWN"

    @property
    def epochs_run(self) -> int:
        return max((int(r.get("epoch", 0)) for r in self.results), default=0)

    def best(self, metric: str, mode: str = "max") -> float | None:
        values = [r[metric] for r in self.results if metric in r]
        return (max if mode == "max" else min)(values) if values else None

    def curve(self, metric: str) -> list[tuple[int, float]]:
        by_epoch = {int(r["epoch"]): r[metric] for r in self.results if metric in r and "epoch" in r}
        return sorted(by_epoch.items())


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _statuses(directory: Path) -> dict[str, str]:
    """Trial statuses from Tune's experiment state (empty if Tune has not written it yet)."""
    try:
        from ray.tune import ExperimentAnalysis

        analysis = ExperimentAnalysis(str(directory))
        return {t.trial_id: t.status for t in analysis.trials}
    except Exception:  # noqa: BLE001 - a report of a half-written folder still shows what is there
        return {}


def load_trials(directory: str | Path) -> list[Trial]:
    """Every trial folder (`trial_*` with params.json) of a search, with its per-epoch results."""
    directory = Path(directory)
    statuses = _statuses(directory)
    trials = []
    for folder in sorted(directory.glob(f"{TRIAL_DIR_PREFIX}*")):
        params_file = folder / PARAMS_FILE
        if not params_file.is_file():
            continue
        trial_id = folder.name.removeprefix(TRIAL_DIR_PREFIX)
        results = [r for r in _read_json_lines(folder / RESULT_FILE) if "epoch" in r]
        status = statuses.get(trial_id, "ERROR" if (folder / "error.txt").exists() else "UNKNOWN")
        trials.append(Trial(trial_id, json.loads(params_file.read_text()), results, status))
    return trials


def summarize(trials: list[Trial], *, metric: str, max_epochs: int, mode: str = "max") -> dict[str, Any]:
    """Table rows, the best trial, and ASHA's compute: trial-epochs run / trial-epochs of full runs."""
    rows = []
    for trial in trials:
        best = trial.best(metric, mode)
        rows.append(
            {
                "trial": trial.trial_id,
                **trial.params,
                f"best_{metric}": best,
                "epochs_run": trial.epochs_run,
                "stopped_early": trial.status != "ERROR" and 0 < trial.epochs_run < max_epochs
                and trial.status not in ("RUNNING", "PENDING"),
                "status": trial.status,
            }
        )
    scored = [r for r in rows if r[f"best_{metric}"] is not None]
    pick = max if mode == "max" else min
    best = pick(scored, key=lambda r: r[f"best_{metric}"]) if scored else None
    run = sum(t.epochs_run for t in trials)
    full = len(trials) * max_epochs
    return {
        "metric": metric,
        "mode": mode,
        "max_epochs": max_epochs,
        "num_trials": len(trials),
        "num_stopped_early": sum(r["stopped_early"] for r in rows),
        "trial_epochs_run": run,
        "trial_epochs_full": full,
        "compute_fraction": run / full if full else None,
        "best_trial": best["trial"] if best else None,
        f"best_{metric}": best[f"best_{metric}"] if best else None,
        "best_config": {k: best[k] for k in trials[0].params} if best and trials else None,
        "rows": rows,
    }


def _best_first(summary: dict[str, Any]) -> list[dict[str, Any]]:
    key = f"best_{summary['metric']}"
    scored = sorted((r for r in summary["rows"] if r[key] is not None), key=lambda r: r[key], reverse=summary["mode"] == "max")
    return scored + [r for r in summary["rows"] if r[key] is None]


def _kind(params: dict[str, Any]) -> Any:
    """The resizer registry's entry for a trial (a search without the kind in its space tunes a learned one)."""
    return resizer_kind(params.get("resizer.kind", LEARNED_KINDS[0]))


def _label(params: dict[str, Any]) -> str:
    return _kind(params).label(params)


def plot_curves(trials: list[Trial], metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for trial in trials:
        curve = trial.curve(metric)
        if curve:
            fixed = not _kind(trial.params).learned
            ax.plot(*zip(*curve), marker="o", linestyle="--" if fixed else "-", label=f"{trial.trial_id} {_label(trial.params)}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{metric} per epoch per trial (dashed: fixed resizers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_hyperparameters(trials: list[Trial], metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for t in trials for k in t.params if k != "resizer.kind"})
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for fixed in (False, True):
            points = [
                (t.params[name], t.best(metric))
                for t in trials
                if t.best(metric) is not None and name in t.params
                and (not _kind(t.params).learned) == fixed
            ]
            if not points:
                continue
            xs, ys = zip(*points)
            xs = [str(x) if isinstance(x, bool) else x for x in xs]
            ax.scatter(xs, ys, marker="x" if fixed else "o", label="fixed" if fixed else "learned")
        if name.endswith("lr"):
            ax.set_xscale("log")
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel(f"best {metric}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _html(summary: dict[str, Any], images: list[Path], title: str) -> str:
    metric = summary["metric"]
    columns = list(summary["rows"][0]) if summary["rows"] else []

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return html.escape(str(value))

    rows = "\n".join(
        "<tr" + (' class="best"' if r["trial"] == summary["best_trial"] else "") + ">"
        + "".join(f"<td>{cell(r[c])}</td>" for c in columns) + "</tr>"
        for r in _best_first(summary)
    )
    pictures = "\n".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in images
    )
    fraction = summary["compute_fraction"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}tr.best{{background:#dfd}}img{{max-width:100%;display:block;margin:1em 0}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>{summary['num_trials']} trials, {summary['num_stopped_early']} stopped early by ASHA.
Best {metric}: <b>{cell(summary[f'best_{metric}'])}</b> (trial {html.escape(str(summary['best_trial']))}).</p>
<p>Compute: {summary['trial_epochs_run']} trial-epochs run of {summary['trial_epochs_full']} for full runs of every
trial ({'' if fraction is None else f'{fraction:.0%}'}).</p>
<h2>Best config</h2><pre>{html.escape(json.dumps(summary['best_config'], indent=2))}</pre>
<h2>Trials</h2>
<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>
{rows}
</table>
<h2>Curves</h2>
{pictures}
</body></html>
"""


def write_report(directory: str | Path) -> dict[str, Any]:
    """Writes the report files into a search folder (local or a URI) and returns the summary.

    Raises:
        ValueError: the folder holds no search, or no trial yet.
        FileNotFoundError: no such folder.
    """
    from pipeline.storage import local_copy

    with local_copy(directory) as local:
        summary = _write_report(local.path, name=local.name)
        summary["report"] = local.where(local.path / "report.html")
    return summary


def _write_report(directory: Path, *, name: str) -> dict[str, Any]:
    from pipeline.config import SearchJobConfig
    from pipeline.tune import read_experiment, search_objective

    job = read_experiment(str(directory), SearchJobConfig)
    metric, mode = search_objective(job)
    max_epochs = job.optim.epochs
    trials = load_trials(directory)
    if not trials:
        raise ValueError(f"{directory}: no trial folders (trial_*/params.json); is this a Tune search folder?")
    summary = summarize(trials, metric=metric, max_epochs=max_epochs, mode=mode)
    images = [
        plot_curves(trials, metric, directory / "curves.png"),
        plot_hyperparameters(trials, metric, directory / "hyperparameters.png"),
    ]
    with open(directory / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary["rows"][0]))
        writer.writeheader()
        writer.writerows(summary["rows"])
    (directory / "report.html").write_text(_html(summary, images, f"Search {name}"))
    (directory / "tune_summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The trial table as text, best first."""
    metric = summary["metric"]
    out = io.StringIO()
    names = [k for k in summary["rows"][0] if k not in ("trial", f"best_{metric}", "epochs_run", "stopped_early", "status")]
    short = {n: n.split(".")[-1] for n in names}
    out.write(f"{'trial':<12}" + "".join(f"{short[n]:>16}" for n in names) + f"{metric:>8}{'epochs':>7}  stopped\n")
    for r in _best_first(summary):
        values = "".join(f"{(f'{r[n]:.3g}' if isinstance(r[n], float) else str(r[n])):>16}" for n in names)
        best = r[f"best_{metric}"]
        out.write(f"{r['trial']:<12}{values}{'-' if best is None else f'{best:.4f}':>8}{r['epochs_run']:>7}  {'yes' if r['stopped_early'] else 'no'}\n")
    fraction = summary["compute_fraction"]
    out.write(
        f"\nbest {metric} {summary[f'best_{metric}']} (trial {summary['best_trial']}): {summary['best_config']}\n"
        f"ASHA: {summary['trial_epochs_run']} of {summary['trial_epochs_full']} trial-epochs run"
        + (f" ({fraction:.0%} of running every trial to the end)\n" if fraction is not None else "\n")
    )
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="a search folder: <storage>/<name> of a Tune job")
    args = parser.parse_args(argv)
    try:
        summary = write_report(args.directory)
    except (ValueError, OSError) as err:  # OSError: a missing folder, a bucket refused or unreachable
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(summary))
    print(f"report: {summary['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
