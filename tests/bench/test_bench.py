"""Smoke test of the benchmark harness in its smallest setting: files and their structure, not timings."""

import json
import math

from bench.run import main


def test_harness_writes_the_table_and_json_with_finite_ratios(tmp_path):
    report = tmp_path / "asha_report.json"
    report.write_text(json.dumps({"trial_epochs_run": 30, "trial_epochs_full": 96, "best_config": {"lr": 1e-4},
                                  "best_top1": 0.9}))
    out = tmp_path / "out"
    assert main(["--quick", "--only", "decode,asha", "--tune-report", str(report), "--out-dir", str(out),
                 "--workdir", str(tmp_path / "work")]) == 0

    results = json.loads((out / "results.json").read_text())
    assert {"date", "cpu", "cpu_count", "versions"} <= set(results["machine"])
    assert set(results["benchmarks"]) == {"decode", "asha"}
    rows = results["rows"]
    assert {r["benchmark"].split()[0] for r in rows} == {"2", "5"}
    for row in rows:
        assert set(row) == {"benchmark", "figure", "baseline", "ratio", "target", "met"}
        if row["ratio"] is None:  # GPU decode, measured only where there is a GPU
            assert "data.decode=gpu" in row["benchmark"] and "not measured" in row["figure"] and row["met"] is None
        else:
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert results["benchmarks"]["asha"]["saved_fraction"] == 1 - 30 / 96

    table = (out / "results.md").read_text()
    assert "| benchmark | figure | limit / baseline | ratio | target | met? |" in table
    assert len([line for line in table.splitlines() if line.startswith("| 2 decode")]) == sum(r["benchmark"].startswith("2") for r in rows)


def test_without_a_tune_report_asha_says_how_to_get_one(tmp_path):
    assert main(["--only", "asha", "--out-dir", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["ratio"] is None and "jobs/tune_cub_resizer.py --demo" in row["figure"]
