"""experiments/analysis_claims_confirmatory.py: Holm, the claim p-values and the verdicts."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments"
    ),
)
import analysis_claims_confirmatory as confirmatory  # noqa: E402


def _record(scenes, head, seed, *, unary=None, within=None, steps=None, miou=0.8):
    key = confirmatory.UNARY_MEASURE[scenes]
    means = {k: v for k, v in ((key, unary), ("pairwise@within", within)) if v is not None}
    return {
        "scenes": scenes,
        "head": head,
        "seed": seed,
        "val_miou": miou,
        "steps_to_learn": steps,
        "analysis": [{"means": means}],
    }


def test_holm_step_down_against_hand_computed_values():
    # Sorted 0.01, 0.02, 0.03, 0.5: ×4, ×3, ×2, ×1, then made monotone.
    assert confirmatory.holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert confirmatory.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert confirmatory.holm([float("nan"), 0.001]) == pytest.approx([1.0, 0.002])
    assert confirmatory.holm([0.6, 0.6]) == pytest.approx([1.0, 1.0])


def test_the_unary_statistic_follows_the_scene_family():
    claim = confirmatory.CLAIMS[0]
    assert confirmatory.measure(claim, "beacon") == "unary@salient"
    assert confirmatory.measure(claim, "regions") == "unary@boundary"
    assert confirmatory.measure(confirmatory.CLAIMS[1], "regions") == "pairwise@within"


def _family(scenes, seeds=confirmatory.SEEDS):
    """Planted runs: A clearly true, B clearly reversed, C undecided (ties), D true."""
    records = []
    for i, seed in enumerate(seeds):
        records += [
            _record(scenes, "nl", seed, unary=0.06, within=0.5, steps=300, miou=0.80),
            _record(scenes, "unary", seed, unary=0.15 + 0.01 * i, miou=0.801),
            _record(scenes, "pairwise", seed, within=0.3 - 0.01 * i),
            _record(scenes, "dnl", seed, unary=0.12, within=0.4, steps=300, miou=0.8),
        ]
    return records


def test_verdicts_confirmed_refuted_cannot_decide_with_holm():
    results = confirmatory.evaluate(_family("beacon") + _family("regions"))
    for scenes in ("beacon", "regions"):
        claims = {r["id"]: r for r in results[scenes]}
        a, b, c, d = (claims[k] for k in "ABCD")
        # A: every seed up in both comparisons: p = 2⁻⁸ each; Holm over 4 → 4 × 2⁻⁸.
        assert a["p_for"] == pytest.approx(1 / 256)
        assert a["p_for_holm"] == pytest.approx(4 / 256) and a["verdict"] == "confirmed"
        assert a["comparisons"][1]["mean"] == pytest.approx(0.06)
        assert a["comparisons"][0]["differences"][8] == pytest.approx(0.09)
        # B: both comparisons reversed on every seed: p against = 2 × 2⁻⁸, Holm-adjusted.
        assert b["p_for"] == 1.0 and b["p_against"] == pytest.approx(2 / 256)
        assert b["verdict"] == "refuted" and b["p_against_holm"] < 0.05
        # C: every seed tied: the sign test has nothing to decide.
        assert c["comparisons"][0]["ties"] == 8 and np.isnan(c["p_for"])
        assert c["p_for_holm"] == 1.0 and c["verdict"] == "cannot decide"
        assert d["verdict"] == "confirmed"  # +0.001 on every seed, margin 0.01
        assert confirmatory.complete(results[scenes])
    # The secondary correction over all eight claims is at least the family's.
    everything = results["beacon"] + results["regions"]
    assert all(r["p_for_holm_all"] >= r["p_for_holm"] - 1e-12 for r in everything)
    assert results["beacon"][0]["p_for_holm_all"] == pytest.approx(8 / 256)


def test_one_comparison_short_of_the_claim_and_missing_heads():
    records = _family("beacon")
    # DNL's unary mass below NL's on one seed: that comparison's p rises, so does the claim's.
    for r in records:
        if r["head"] == "dnl" and r["seed"] == 8:
            r["analysis"][0]["means"]["unary@salient"] = 0.05
    a = confirmatory.evaluate_family(records, "beacon")[0]
    unary_only, dnl = a["comparisons"]
    assert unary_only["p_for"] == pytest.approx(1 / 256)
    assert dnl["p_for"] > 1 / 256 and a["p_for"] == dnl["p_for"]
    # No pairwise-only run: B is not measured; four seeds are not complete.
    partial = [r for r in _family("regions", seeds=(8, 9, 10, 11)) if r["head"] != "pairwise"]
    results = confirmatory.evaluate_family(partial, "regions")
    assert results[1]["verdict"] == "not measured"
    assert results[0]["seeds"] == 4 and not confirmatory.complete(results)
    # With 4 seeds the smallest possible p is 1/16: nothing can be confirmed.
    assert results[0]["p_for"] == pytest.approx(1 / 16) and results[0]["verdict"] != "confirmed"


def test_sign_test_counts_never_learning_runs_and_swaps_for_against():
    records = []
    for seed in confirmatory.SEEDS:
        nl_steps = None if seed < 11 else 300
        dnl_steps = 200 if seed != 15 else 400
        records += [
            _record("beacon", "nl", seed, steps=nl_steps),
            _record("beacon", "dnl", seed, steps=dnl_steps),
        ]
    c = confirmatory.evaluate_family(records, "beacon")[2]["comparisons"][0]
    assert (c["wins"], c["losses"], c["never_reference"]) == (7, 1, 3)
    assert c["p_for"] == pytest.approx(9 / 256)
    assert c["p_against"] == pytest.approx(255 / 256)
