"""Section 7's tools on cases whose answers are known by hand."""
import numpy as np
import pytest

from minilora.analysis import (
    amplification, linear_layer_costs, phi, projection_norms, random_subspace_similarity, subspace_similarity,
)


def test_identical_subspaces_give_one():
    A = np.random.default_rng(0).standard_normal((4, 10))
    np.testing.assert_allclose(subspace_similarity(A, A), np.ones((4, 4)), atol=1e-12)
    # Same row space, other basis: the whole subspaces agree (i = j = r), the ordered prefixes need not.
    M = np.random.default_rng(1).standard_normal((4, 4))
    assert phi(A, M @ A, 4, 4) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_subspaces_give_zero():
    eye = np.eye(6)
    A1, A2 = eye[:2] * [[3.0], [1.0]], eye[2:5] * [[2.0], [1.0], [0.5]]  # spans {e0, e1} and {e2, e3, e4}
    np.testing.assert_allclose(subspace_similarity(A1, A2), np.zeros((2, 3)), atol=1e-15)


def test_a_hand_computed_partial_overlap():
    # A1's top direction is e0; A2's top two are e1 then (e0 + e2)/sqrt(2), then e3.
    A1 = np.array([[2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    A2 = np.array([[0, 3.0, 0, 0], [1.0, 0, 1.0, 0], [0, 0, 0, 0.5]])  # singular values 3, sqrt(2), 0.5
    grid = subspace_similarity(A1, A2)
    assert grid.shape == (2, 3)
    assert grid[0, 0] == pytest.approx(0.0, abs=1e-12)  # e0 against e1
    assert grid[0, 1] == pytest.approx(0.5)  # |<e0, (e0+e2)/sqrt 2>|^2 / min(1, 2)
    assert grid[1, 2] == pytest.approx((0.5 + 1.0) / 2)  # e0 half in, e3 fully in, over min(2, 3)
    with pytest.raises(ValueError, match=r"need 1 <= i <= 2"):
        phi(A1, A2, 3, 1)


def test_amplification_by_hand():
    W = np.diag([10.0, 1.0, 0.5])
    delta = np.zeros((3, 3))
    delta[1, 1] = 2.0  # ΔW boosts a direction W has but does not emphasise
    out = amplification(delta, W, r=1)
    assert out == pytest.approx({"delta_norm": 2.0, "projection_norm": 1.0, "factor": 2.0})
    delta = np.zeros((3, 3))
    delta[0, 0] = 2.0  # ... or W's top direction, which it barely amplifies
    assert amplification(delta, W, r=1)["factor"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="same shape"):
        amplification(np.zeros((2, 3)), W, 1)


def test_layer_costs():
    c = linear_layer_costs(d=768, k=768, r=8, tokens=1)
    assert c["full_flops"] - c["lora_flops"] == c["flops_saved"] == 2 * 768 * 768 - 6 * 8 * 1536
    assert c["trainable_lora"] == 2 * 768 * 8


def test_random_baseline_matches_its_expectation():
    # Two random subspaces of R^k of dimensions i <= j: E φ(i, j) = max(i, j) / k.
    k, draws = 30, 400
    grids = np.stack([random_subspace_similarity(4, 6, k, rng=seed) for seed in range(draws)])  # (draws, 4, 6)
    assert grids.min() >= 0.0 and grids.max() <= 1.0 + 1e-12
    i, j = np.arange(1, 5)[:, None], np.arange(1, 7)[None, :]
    expected = np.maximum(i, j) / k
    standard_error = grids.std(axis=0) / np.sqrt(draws)
    assert np.all(np.abs(grids.mean(axis=0) - expected) < 4 * standard_error + 1e-3)
    np.testing.assert_array_equal(random_subspace_similarity(4, 6, k, rng=7), random_subspace_similarity(4, 6, k, rng=7))


def test_projection_norms_by_hand():
    W = np.diag([10.0, 1.0, 0.5])
    delta = np.zeros((3, 3))
    delta[1, 1] = 2.0  # ΔW's one direction is W's second: it holds 1.0 of W
    out = projection_norms(delta, W, r=1, rng=0)
    assert out["delta"] == pytest.approx(1.0) and out["W"] == pytest.approx(10.0)  # W's own top direction holds 10
    assert out["delta_norm"] == pytest.approx(2.0) and out["factor"] == pytest.approx(2.0)
    assert out["W_norm"] == pytest.approx(np.sqrt(100 + 1 + 0.25))
    assert 0.0 <= out["random"] <= out["W"]
    # With r = 3 every U, V is a whole orthonormal basis, so each projection keeps all of ‖W‖_F.
    full = projection_norms(delta + np.eye(3), W, r=3, rng=0)
    for key in ("delta", "W", "random"):
        assert full[key] == pytest.approx(full["W_norm"])
