"""detectors.metrics: AUROC / AUPR-in / AUPR-out / FPR95 / TNR95 against scikit-learn called
directly and against direct numpy computations (docs/design.md, "Detectors": OOD is the positive
class for AUROC and aupr_out; aupr_in has in-distribution positive on negated scores; fpr95 is
the share of OOD samples accepted (score <= threshold) when 95% of in-distribution samples are
accepted)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from detectors.metrics import METRICS, balance_classes, evaluate, fpr_at_tpr


def _scores(n_in=300, n_out=200, shift=1.0, seed=0):
    """Continuous scores (no ties with probability 1); OOD shifted up (more anomalous)."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, n_in), rng.normal(shift, 1.0, n_out)


def _fpr_numpy(s_in, s_out, tpr=0.95):
    """Threshold = the smallest in-distribution score such that a fraction >= tpr of the
    in-distribution scores are at or below it; fpr = share of OOD scores at or below it."""
    s_in = np.sort(np.asarray(s_in))
    thr = s_in[math.ceil(tpr * len(s_in) - 1e-9) - 1]
    assert np.mean(s_in <= thr) >= tpr  # sanity of the helper itself (no ties)
    return float(np.mean(np.asarray(s_out) <= thr))


def _auroc_pairs(s_in, s_out):
    """Mann-Whitney form of the AUROC with OOD positive: P(s_out > s_in) + 0.5 P(tie)."""
    o, i = np.asarray(s_out)[:, None], np.asarray(s_in)[None, :]
    return float(np.mean(o > i) + 0.5 * np.mean(o == i))  # comparisons: fine with +-inf


# ------------------------------------------------------------------ against sklearn / numpy
def test_keys_and_types():
    s_in, s_out = _scores()
    r = evaluate(s_in, s_out)
    assert tuple(r) == METRICS == ("auroc", "aupr_in", "aupr_out", "fpr95", "tnr95")
    for k, v in r.items():
        assert type(v) is float, k
        assert 0.0 <= v <= 1.0, (k, v)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_called_directly(seed):
    s_in, s_out = _scores(seed=seed)
    labels_ood = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    both = np.r_[s_in, s_out]
    r = evaluate(s_in, s_out)
    assert r["auroc"] == pytest.approx(roc_auc_score(labels_ood, both), abs=1e-12)
    assert r["aupr_out"] == pytest.approx(average_precision_score(labels_ood, both), abs=1e-12)
    assert r["aupr_in"] == pytest.approx(average_precision_score(1 - labels_ood, -both), abs=1e-12)
    # an independent form of the AUROC
    assert r["auroc"] == pytest.approx(_auroc_pairs(s_in, s_out), abs=1e-12)
    # OOD scores are higher: all three are well above chance
    assert r["auroc"] > 0.65 and r["aupr_out"] > len(s_out) / len(both) + 0.1


def test_aupr_in_is_in_distribution_positive_on_negated_scores():
    # AUPR-in and AUPR-out differ on an imbalanced problem; check the two are not swapped
    s_in, s_out = _scores(n_in=900, n_out=100, shift=1.0, seed=3)
    r = evaluate(s_in, s_out)
    labels_in = np.r_[np.ones(900), np.zeros(100)]
    both = np.r_[s_in, s_out]
    assert r["aupr_in"] == pytest.approx(average_precision_score(labels_in, -both), abs=1e-12)
    assert r["aupr_in"] > 0.9 > 0.6 > r["aupr_out"]  # the majority class is easy to be precise on


@pytest.mark.parametrize(
    "n_in,n_out,seed", [(100, 80, 0), (101, 57, 1), (37, 200, 2), (1000, 1000, 3), (20, 20, 4), (999, 31, 5)]
)
def test_fpr95_against_numpy_threshold(n_in, n_out, seed):
    s_in, s_out = _scores(n_in, n_out, shift=1.5, seed=seed)
    r = evaluate(s_in, s_out)
    expected = _fpr_numpy(s_in, s_out, 0.95)
    assert r["fpr95"] == pytest.approx(expected, abs=1e-12)
    assert r["tnr95"] == pytest.approx(1.0 - expected, abs=1e-12)
    assert fpr_at_tpr(s_in, s_out, 0.95) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("tpr", [0.5, 0.8, 0.9, 0.99, 1.0])
def test_fpr_at_other_tpr_against_numpy(tpr):
    s_in, s_out = _scores(400, 300, shift=1.0, seed=7)
    assert fpr_at_tpr(s_in, s_out, tpr) == pytest.approx(_fpr_numpy(s_in, s_out, tpr), abs=1e-12)


def test_fpr95_small_hand_example():
    # 20 in-distribution scores 0..19: accepting 95% (19 of 20) puts the threshold at 18.
    s_in = np.arange(20.0)
    s_out = np.array([-1.0, 5.5, 17.9, 18.0, 18.5, 30.0, 40.0, 50.0])
    r = evaluate(s_in, s_out)
    assert r["fpr95"] == pytest.approx(4 / 8)  # -1, 5.5, 17.9, 18.0 are accepted (<= 18)
    assert r["tnr95"] == pytest.approx(4 / 8)


def test_ties_accept_at_threshold():
    # all equal: accepting 95% of in-distribution accepts everything, OOD included
    r = evaluate(np.zeros(20), np.zeros(10))
    assert r["fpr95"] == 1.0 and r["tnr95"] == 0.0
    assert r["auroc"] == pytest.approx(0.5)


def test_direction_and_swap():
    s_in, s_out = _scores(seed=11)
    r, swapped = evaluate(s_in, s_out), evaluate(s_out, s_in)
    assert swapped["auroc"] == pytest.approx(1.0 - r["auroc"], abs=1e-12)
    # negating every score reverses the ranking too
    neg = evaluate(-s_in, -s_out)
    assert neg["auroc"] == pytest.approx(1.0 - r["auroc"], abs=1e-12)


def test_perfect_separation():
    s_in = np.linspace(-3, -1, 50)
    s_out = np.linspace(1, 4, 70)
    r = evaluate(s_in, s_out)
    assert r == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0, "tnr95": 1.0}
    worst = evaluate(s_out, s_in)  # OOD scored as the most normal
    assert worst["auroc"] == 0.0
    assert worst["fpr95"] == 1.0 and worst["tnr95"] == 0.0


def test_torch_and_numpy_inputs_agree():
    s_in, s_out = _scores(seed=5)
    a = evaluate(s_in, s_out)
    b = evaluate(torch.from_numpy(s_in), torch.from_numpy(s_out).float().double())
    c = evaluate(list(s_in), list(s_out))
    assert a == b == c


# ----------------------------------------------------------------------- infinities, NaN
def test_infinities_ranked_at_the_ends():
    s_in, s_out = _scores(seed=8)
    s_in, s_out = s_in.copy(), s_out.copy()
    s_out[:10] = np.inf  # e.g. -log p with p = 0: maximally anomalous
    s_in[:3] = -np.inf  # maximally normal
    s_in[3] = np.inf  # an in-distribution sample with an infinite score
    r = evaluate(s_in, s_out)
    for v in r.values():
        assert math.isfinite(v)
    big_in, big_out = s_in.copy(), s_out.copy()
    for a in (big_in, big_out):
        a[a == np.inf] = 1e12
        a[a == -np.inf] = -1e12
    ref = evaluate(big_in, big_out)
    for k in METRICS:
        assert r[k] == pytest.approx(ref[k], abs=1e-12), k
    assert r["auroc"] == pytest.approx(_auroc_pairs(s_in, s_out), abs=1e-12)  # numpy compares infs fine


def test_only_infinities():
    r = evaluate(np.full(5, -np.inf), np.full(7, np.inf))
    assert r["auroc"] == 1.0 and r["fpr95"] == 0.0
    r = evaluate(np.full(5, np.inf), np.full(7, np.inf))
    assert r["auroc"] == pytest.approx(0.5) and r["fpr95"] == 1.0


@pytest.mark.parametrize("where", ["in", "out"])
def test_nan_raises(where):
    s_in, s_out = _scores()
    s_in, s_out = s_in.copy(), s_out.copy()
    (s_in if where == "in" else s_out)[4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(s_in, s_out)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(torch.from_numpy(s_in), torch.from_numpy(s_out), balance=True)


def test_bad_shapes_raise():
    s_in, s_out = _scores()
    with pytest.raises(ValueError):
        evaluate(s_in.reshape(-1, 2), s_out)
    with pytest.raises(ValueError):
        evaluate(s_in, np.array([]))
    with pytest.raises(ValueError):
        evaluate(np.array([]), s_out)


# --------------------------------------------------------------------------- balancing
def test_balance_classes_sizes_subset_and_determinism():
    s_in, s_out = _scores(n_in=1000, n_out=100, seed=9)
    a_in, a_out = balance_classes(s_in, s_out, seed=0)
    assert len(a_in) == len(a_out) == 100
    np.testing.assert_array_equal(a_out, s_out)  # the smaller set is kept whole, in order
    assert set(a_in.tolist()) <= set(s_in.tolist()) and len(set(a_in.tolist())) == 100  # no repeats
    b_in, _ = balance_classes(s_in, s_out, seed=0)
    np.testing.assert_array_equal(a_in, b_in)
    c_in, _ = balance_classes(s_in, s_out, seed=1)
    assert not np.array_equal(a_in, c_in)
    # larger OOD set: OOD is subsampled instead
    d_out, d_in = balance_classes(s_out, s_in, seed=0)
    assert len(d_out) == len(d_in) == 100
    np.testing.assert_array_equal(d_out, s_out)


def test_evaluate_balance_equals_evaluate_on_balanced_sets():
    s_in, s_out = _scores(n_in=2000, n_out=150, seed=10)
    for seed in (0, 3):
        r = evaluate(s_in, s_out, balance=True, seed=seed)
        assert r == evaluate(*balance_classes(s_in, s_out, seed=seed))
        assert r == evaluate(s_in, s_out, balance=True, seed=seed)  # deterministic
    assert evaluate(s_in, s_out, balance=True, seed=0) != evaluate(s_in, s_out, balance=True, seed=3)


def test_balance_moves_aupr_to_chance_half():
    # identical distributions, 10:1 imbalance: chance AUPR-out is the OOD share (~0.09)
    # without balancing and ~0.5 with it
    rng = np.random.default_rng(12)
    s_in, s_out = rng.normal(size=5000), rng.normal(size=500)
    plain, bal = evaluate(s_in, s_out), evaluate(s_in, s_out, balance=True)
    assert plain["aupr_out"] == pytest.approx(500 / 5500, abs=0.03)
    assert bal["aupr_out"] == pytest.approx(0.5, abs=0.05)
    assert plain["auroc"] == pytest.approx(0.5, abs=0.05) and bal["auroc"] == pytest.approx(0.5, abs=0.05)
