"""experiments/analysis_experiment.py --smoke: train, analyse and write every record on CPU."""

import json
import os
import subprocess
import sys

from train_testing import CACHE_ENV

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_smoke_mode_writes_all_records(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "experiments/analysis_experiment.py",
        "--smoke",
        "--out",
        str(out),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--workers",
        "1",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        env={**os.environ, **CACHE_ENV},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["analysis.json", "analysis.md", "analysis.png"]
    with open(out / "analysis.json") as f:
        record = json.load(f)
    beacon, regions = record["runs"]  # beacon scenes first, then regions
    assert (regions["scenes"], regions["head"], regions["steps"]) == ("regions", "nl", 2)
    assert regions["analysis"][0]["path"] == "decode_head/nl_block"
    assert set(regions["analysis"][0]["means"]) >= {
        "query_independence/full",
        "pairwise~within",
        "unary~boundary",
        "unary~salient",
        "pairwise~salient",
        "unary@salient",
        "salient_area",
    }
    assert (beacon["head"], beacon["model"]) == ("dnl", "dnl_tiny")
    # The learning-speed curve: one point per step (--cue_every 1 in smoke mode).
    assert [e["step"] for e in beacon["cue_curve"]] == [1, 2]
    assert all(0 <= e["cue_accuracy"] <= 1 and e["objects"] > 0 for e in beacon["cue_curve"])
    assert [c["verdict"] for c in record["claims"]["beacon"]] == ["not measured"] * 4
    text = (out / "analysis.md").read_text()
    assert "| nl | nl_tiny | 1 |" in text and "Exact values differ" in text
    assert "python experiments/analysis_experiment.py --smoke" in text
    assert "- dnl: seeds [0] present" in text and "### Learning speed" in text
    saliency_table = text.split("### Saliency")[1].split("###")[0]
    assert "| dnl | 1 | " in saliency_table and "un~salient" in saliency_table
    # A rerun skips the saved runs and rewrites the same record.
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, **CACHE_ENV},
    )
    assert done.returncode == 0 and "2 of 2 runs already saved" in done.stdout, done.stderr[-3000:]
