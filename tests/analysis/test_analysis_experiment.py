"""experiments/analysis_experiment.py --smoke: train, analyse and write every record on CPU."""

import json
import os
import subprocess
import sys

from train_testing import CACHE_ENV

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_smoke_mode_writes_all_records(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "experiments/analysis_experiment.py", "--smoke", "--out", str(out),
               "--runs_dir", str(tmp_path / "runs"), "--workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**os.environ, **CACHE_ENV})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["analysis.json", "analysis.md", "analysis.png",
                                       "synthetic_ablation.json", "synthetic_ablation.md"]
    with open(out / "analysis.json") as f:
        regions = json.load(f)
    (run,) = regions["runs"]
    assert (run["scenes"], run["head"], run["steps"]) == ("regions", "nl", 2)
    assert run["analysis"][0]["path"] == "decode_head/nl_block"
    assert set(run["analysis"][0]["means"]) >= {"query_independence/full", "pairwise~within",
                                                "unary~boundary"}
    with open(out / "synthetic_ablation.json") as f:
        (beacon,) = json.load(f)["runs"]
    assert (beacon["head"], beacon["model"]) == ("dnl", "dnl_tiny")
    text = (out / "analysis.md").read_text()
    assert "| nl | nl_tiny | 1 |" in text and "Exact values differ" in text
    assert "python experiments/analysis_experiment.py --smoke" in text
