"""bench/bench_elastic_resume.py in its quick setting: the step saved by 2 ranks resumes on 2 from their own shards
and on 1 through one conversion, and its row is written. Mechanics, not timings."""

import math

import pytest

from bench.bench_elastic_resume import run


@pytest.mark.slow
def test_the_quick_run_resumes_on_the_same_and_another_count_and_writes_its_row(tmp_path):
    out = run(tmp_path, quick=True)
    figures = out["figures"]
    same, other = figures["same_count"], figures["other_count"]
    assert (same["world_size"], other["world_size"]) == (2, 1)
    assert same["step"] == other["step"] == 1  # both resumed the saved step
    assert "convert_s" not in same and other["convert_s"] > 0  # only the other count converts
    root = tmp_path / "elastic_resume"
    assert sorted(p.name for p in (root / "ds").iterdir() if "optim_states" in p.name) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (root / "ds_universal").is_dir() and figures["universal_gib"] > 0 and figures["zero_shards_gib"] > 0
    [row] = out["rows"]
    assert row["benchmark"].startswith("9 elastic resume, small Swin") and row["target"] == "report only"
    assert math.isfinite(row["ratio"]) and row["ratio"] == other["resume_s"] / same["resume_s"]
