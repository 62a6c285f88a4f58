"""experiments/analysis_claims.py: the experiment's paired statistics, on planted records."""

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
import analysis_claims  # noqa: E402


def _record(head, seed, *, unary=None, within=None, steps=None, miou=0.8):
    means = {
        k: v for k, v in (("unary~salient", unary), ("pairwise~within", within)) if v is not None
    }
    return {
        "head": head,
        "seed": seed,
        "val_miou": miou,
        "steps_to_learn": steps,
        "analysis": [{"means": means}],
    }


def test_permutation_p_is_exact_over_sign_patterns():
    assert analysis_claims.permutation_p([1.0, 2.0, 3.0]) == pytest.approx(1 / 8)
    assert analysis_claims.permutation_p([0.5] * 8) == pytest.approx(1 / 256)
    # One negative of four, against a brute-force count over the 16 sign patterns.
    d = np.array([3.0, 2.0, 1.0, -1.0])
    signs = np.array(np.meshgrid(*[[1, -1]] * 4)).reshape(4, -1).T
    expected = np.mean(signs @ d >= d.sum())
    assert analysis_claims.permutation_p(d) == pytest.approx(expected)
    assert analysis_claims.permutation_p([-1.0, -2.0]) == 1.0
    # Non-inferiority: differences of -0.005 pass a 0.01 margin, fail none.
    assert analysis_claims.permutation_p([-0.005] * 6, margin=0.01) == pytest.approx(1 / 64)
    assert analysis_claims.permutation_p([-0.005] * 6) == 1.0
    assert np.isnan(analysis_claims.permutation_p([]))


def test_sign_test_p():
    assert analysis_claims.sign_test_p(5, 0) == pytest.approx(1 / 32)
    assert analysis_claims.sign_test_p(4, 1) == pytest.approx(6 / 32)
    assert analysis_claims.sign_test_p(0, 3) == 1.0
    assert np.isnan(analysis_claims.sign_test_p(0, 0))


def test_claims_on_planted_records_hold_fail_and_go_unmeasured():
    records = []
    for seed in range(8):
        records += [
            _record(
                "nl",
                seed,
                unary=0.1,
                within=0.2,
                steps=None if seed < 3 else 400,
                miou=0.80 + 0.001 * seed,
            ),
            _record("unary", seed, unary=0.5 + 0.01 * seed, miou=0.805),
            _record("dnl", seed, unary=0.6, within=0.1, steps=200 if seed != 7 else 600, miou=0.8),
        ]
    claims = {c["id"]: c for c in analysis_claims.evaluate(records)}
    assert claims["a"]["verdict"] == "holds"
    a_dnl = claims["a"]["comparisons"][1]
    assert a_dnl["mean"] == pytest.approx(0.5) and a_dnl["p"] == pytest.approx(1 / 256)
    assert claims["b"]["verdict"] == "not measured"  # no pairwise-only runs
    c = claims["c"]["comparisons"][0]
    # DNL earlier on seeds 0-6 (3 of them NL never learns), later on seed 7.
    assert (c["wins"], c["losses"], c["ties"], c["never_reference"]) == (7, 1, 0, 3)
    assert c["p"] == pytest.approx(9 / 256) and claims["c"]["verdict"] == "holds"
    assert c["both_learn"] == 5 and c["mean"] == pytest.approx((4 * -200 + 200) / 5)
    assert claims["d"]["verdict"] == "holds"  # unary within 0.01 of NL on every seed
    text = "\n".join(analysis_claims.markdown(list(claims.values())))
    assert "- (a) unary ↔ salient" in text and "**holds**" in text and "**not measured**" in text


def test_a_claim_needs_every_comparison_and_its_direction():
    records = [
        r
        for seed in range(8)
        for r in (
            _record("nl", seed, unary=0.3),
            _record("unary", seed, unary=0.5),
            _record("dnl", seed, unary=0.2 + (0.2 if seed % 2 else -0.2)),
        )
    ]
    (a,) = [c for c in analysis_claims.evaluate(records) if c["id"] == "a"]
    assert [c["holds"] for c in a["comparisons"]] == [True, False]
    assert a["verdict"] == "not shown"
