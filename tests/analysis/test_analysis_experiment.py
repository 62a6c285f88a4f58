"""experiments/analysis_experiment.py --smoke: train, analyse and write every record on CPU;
the two-part record (experiments/analysis_record.py) on planted runs; the docs' quote of it."""

import copy
import json
import os
import subprocess
import sys

import pytest
from train_testing import CACHE_ENV

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import analysis_experiment  # noqa: E402
import analysis_record  # noqa: E402


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
    assert sorted(os.listdir(out)) == [
        "analysis.json",
        "analysis.md",
        "analysis_attention.png",
        "analysis_confirmatory.png",
        "analysis_exploratory.png",
        "analysis_runs",
    ]
    # One summary per run, without the figure maps (those stay in --runs_dir).
    summaries = sorted(os.listdir(out / "analysis_runs"))
    assert summaries == ["beacon_dnl_seed0.json", "regions_nl_seed0.json"]
    with open(out / "analysis_runs" / "regions_nl_seed0.json") as f:
        assert "figure_rows" not in json.load(f)
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
        # the confirmatory claims' mass statistics and their chance levels
        "unary@boundary",
        "boundary_area",
        "pairwise@within",
        "within_area",
    }
    assert (beacon["head"], beacon["model"]) == ("dnl", "dnl_tiny")
    # The learning-speed curve: one point per step (--cue_every 1 in smoke mode).
    assert [e["step"] for e in beacon["cue_curve"]] == [1, 2]
    assert all(0 <= e["cue_accuracy"] <= 1 and e["objects"] > 0 for e in beacon["cue_curve"])
    assert [c["verdict"] for c in record["claims"]["exploratory"]["beacon"]] == ["not measured"] * 4
    text = (out / "analysis.md").read_text()
    assert "| nl | nl_tiny | 1 |" in text and "Exact values differ" in text
    assert "python experiments/analysis_experiment.py --smoke" in text
    assert "- dnl: seeds [0] present" in text and "#### Learning speed" in text
    assert text.index(analysis_record.SUMMARY_END) < text.index("## How far the runs got")
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


def _planted(template, scenes, head, seed, means, *, steps_to_learn=300, miou=0.88):
    record = copy.deepcopy(template)
    record.update(
        scenes=scenes,
        head=head,
        seed=seed,
        model=analysis_experiment.HEADS[head],
        steps=1000 if scenes == "beacon" else 2000,
        steps_to_learn=steps_to_learn,
        val_miou=miou,
    )
    record["analysis"][0]["means"] = means
    return record


def test_report_only_rewrites_the_two_part_record_from_summaries(tmp_path):
    """The regenerate command on planted confirmatory summaries (beacon, seeds 8-15): A clearly
    true, B clearly reversed, C all ties, D true; regions not run."""
    with open(os.path.join(REPO, "experiments/results/analysis_runs/beacon_nl_seed0.json")) as f:
        template = json.load(f)
    out = tmp_path / "out"
    runs = []
    for i, seed in enumerate(range(8, 16)):
        runs += [
            _planted(
                template, "beacon", "nl", seed, {"unary@salient": 0.063, "pairwise@within": 0.5}
            ),
            _planted(
                template, "beacon", "unary", seed, {"unary@salient": 0.15 + 0.01 * i}, miou=0.881
            ),
            _planted(template, "beacon", "pairwise", seed, {"pairwise@within": 0.3}),
            _planted(
                template, "beacon", "dnl", seed, {"unary@salient": 0.12, "pairwise@within": 0.4}
            ),
        ]
    analysis_experiment.save_summaries(str(out), runs)
    analysis_experiment.main(
        ["--report_only", "--out", str(out), "--runs_dir", str(tmp_path / "none")]
    )
    text = (out / "analysis.md").read_text()
    summary = text.split(analysis_record.SUMMARY_END)[0]
    assert "*Beacon scenes* (32 of 32 runs; final):" in summary
    assert "*Regions scenes* (0 of 32 runs; runs not finished: verdicts interim):" in summary
    beacon = summary.split("*Regions scenes*")[0]
    # A: 2⁻⁸ per comparison, Holm over four claims: 4 × 2⁻⁸ = 0.0156.
    assert (
        "(unary mass on the beacon cells, unary-only and DNL vs NL): **confirmed** (Holm-" in beacon
    )
    assert "adjusted p = 0.0156 for, 1.0000 against; unary-only − NL +0.122 ± 0.009;" in beacon
    assert "own category, pairwise-only and DNL vs NL): **refuted**" in beacon
    assert "DNL vs NL): **cannot decide**" in beacon
    assert (
        analysis_record.SHORT_PREFIX + "confirmed: (A) the unary term on its targets on beacon, "
        "(D) unary-only as good as NL on beacon; refuted: (B) the pairwise term on the own "
        "category on beacon; cannot decide: (C) DNL learning faster on beacon; not measured: "
        "(A) the unary term on its targets on regions, (B)" in summary
    )
    wall = f"{template['train_wall_s']:.0f}"
    assert (
        f"| confirmatory | beacon | dnl | 8 / 8 | 8, 9, 10, 11, 12, 13, 14, 15 | {wall} |" in text
    )
    assert "| exploratory | regions | nl | 0 / 8 | none | – |" in text
    assert "| (A) unary@salient | unary − nl | 8 | unary-only − NL +0.1220 ± 0.0087 |" in text
    with open(out / "analysis.json") as f:
        claims = json.load(f)["claims"]["confirmatory"]["beacon"]
    assert [c["verdict"] for c in claims] == ["confirmed", "refuted", "cannot decide", "confirmed"]
    assert claims[0]["p_for_holm"] == pytest.approx(4 / 256)
    assert os.path.getsize(out / "analysis_confirmatory.png") > 10_000


def test_docs_and_readme_quote_the_record_summary_word_for_word():
    """docs/analysis.md quotes the record's summary, the README its "In short" line; refresh
    both with `python experiments/analysis_record.py experiments/results/analysis.md
    docs/analysis.md README.md`."""
    with open(os.path.join(REPO, "experiments/results/analysis.md")) as f:
        summary, short = analysis_record.quoted(f.read())
    assert short.startswith(analysis_record.SHORT_PREFIX) and short in summary
    with open(os.path.join(REPO, "docs/analysis.md")) as f:
        assert summary in f.read(), "docs/analysis.md must quote the record's summary"
    with open(os.path.join(REPO, "README.md")) as f:
        assert short in f.read(), "README.md must quote the record's 'In short' line"


def test_quote_into_replaces_only_the_marked_quotes(tmp_path):
    start, end = analysis_record.SUMMARY_START, analysis_record.SUMMARY_END
    short_start, short_end = analysis_record.SHORT_START, analysis_record.SHORT_END
    short = analysis_record.SHORT_PREFIX + "confirmed: none."
    record = tmp_path / "record.md"
    record.write_text(f"{start}\nnew summary\n{short}\n{end}\n# rest\n")
    docs, readme = tmp_path / "docs.md", tmp_path / "README.md"
    docs.write_text(f"intro\n{start}\nold\n{end}\noutro\n")
    readme.write_text(f"text {short_start}\nold\n{short_end} more\n")
    analysis_record.quote_into(str(record), [str(docs), str(readme)])
    assert docs.read_text() == f"intro\n{start}\nnew summary\n{short}\n{end}\noutro\n"
    assert readme.read_text() == f"text {short_start}\n{short}\n{short_end} more\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    with pytest.raises(SystemExit, match="plain.md: no <!-- summary: start --> or"):
        analysis_record.quote_into(str(record), [str(plain)])
    assert plain.read_text() == "no markers\n"
