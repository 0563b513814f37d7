import pytest
import torch

from ace_erasure.errors import ConfigError
from ace_erasure.linalg import (
    RidgeEditFitter,
    rank_for_energy,
    solve_ridge_edit,
    top_singular,
    truncate_rank,
)


def _oracle_delta(weight, targets, anchors, preserve, w_target, lam_p, lam):
    """Δ minimising Σ w‖(W+Δ)t − W a‖² + λ_p Σ‖Δp‖² + λ‖Δ‖², by stacked least squares."""
    d = weight.shape[1]
    rows = [
        (targets * w_target.sqrt().unsqueeze(1)),
        preserve * lam_p**0.5,
        torch.eye(d, dtype=torch.float64) * lam**0.5,
    ]
    design = torch.cat(rows)  # (N, d): Δ design = stacked inputs
    residual_targets = ((anchors - targets) @ weight.T) * w_target.sqrt().unsqueeze(1)
    rhs = torch.cat(
        [residual_targets, torch.zeros(len(preserve) + d, weight.shape[0], dtype=torch.float64)]
    )
    return torch.linalg.lstsq(design, rhs).solution.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("dim,n,m", [(8, 3, 20), (16, 40, 5), (32, 10, 100)])
def test_solver_matches_least_squares_oracle(dtype, dim, n, m):
    g = torch.Generator().manual_seed(dim + n)
    weight = torch.randn(12, dim, generator=g, dtype=torch.float64)
    targets = torch.randn(n, dim, generator=g, dtype=torch.float64)
    anchors = torch.randn(n, dim, generator=g, dtype=torch.float64)
    preserve = torch.randn(m, dim, generator=g, dtype=torch.float64)
    fitter = RidgeEditFitter(dim)
    fitter.update_targets(targets.to(dtype), anchors.to(dtype))
    fitter.update_preserve(preserve.to(dtype))
    solution = fitter.solve(preserve_weight=0.7, ridge=0.05)
    # the fitter averages: target weight 1/n each, preserve 1/m each; λ is relative to the trace
    t, a, p = (x.to(dtype).double() for x in (targets, anchors, preserve))
    lam = solution.ridge_absolute
    expected = _oracle_delta(
        weight, t, a, p * (1 / m) ** 0.5, torch.full((n,), 1 / n, dtype=torch.float64), 0.7, lam
    )
    assert torch.allclose(solution.delta(weight), expected, atol=1e-8, rtol=1e-6)


def test_incremental_statistics_equal_batch():
    g = torch.Generator().manual_seed(1)
    t, a, p = (torch.randn(30, 6, generator=g) for _ in range(3))
    batch = RidgeEditFitter(6)
    batch.update_targets(t, a)
    batch.update_preserve(p)
    incremental = RidgeEditFitter(6)
    for i in range(0, 30, 7):
        incremental.update_targets(t[i : i + 7], a[i : i + 7])
        incremental.update_preserve(p[i : i + 7])
    for x, y in zip(batch.statistics(), incremental.statistics()):
        assert torch.allclose(x, y, atol=1e-12)


def test_groups_are_weighted_equally_whatever_their_size():
    g = torch.Generator().manual_seed(2)
    fitter = RidgeEditFitter(4)
    small = torch.randn(2, 4, generator=g)
    big = torch.randn(50, 4, generator=g)
    fitter.begin_group()
    fitter.update_targets(small, torch.zeros_like(small))
    fitter.begin_group()
    fitter.update_targets(big, torch.zeros_like(big))
    gram, _, _ = fitter.statistics()
    expected = small.double().T @ small.double() / 2 + big.double().T @ big.double() / 50
    assert torch.allclose(gram, expected)


def test_edit_maps_targets_to_anchors_when_unconstrained():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(5, 8, generator=g, dtype=torch.float64)
    targets, anchors = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    fitter = RidgeEditFitter(8)
    fitter.update_targets(targets, anchors)
    solution = fitter.solve(preserve_weight=0.0, ridge=1e-9)
    edited = weight + solution.delta(weight)
    assert torch.allclose(targets.double() @ edited.T, anchors.double() @ weight.T, atol=1e-5)


def test_singular_system_is_a_clear_error():
    fitter = RidgeEditFitter(8)
    fitter.update_targets(torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(ConfigError, match="singular"):
        fitter.solve(preserve_weight=0.0, ridge=0.0)


def test_no_targets_and_negative_parameters_are_errors():
    with pytest.raises(ConfigError, match="nothing to erase"):
        RidgeEditFitter(4).solve(1.0, 0.1)
    with pytest.raises(ConfigError):
        solve_ridge_edit(
            torch.eye(3, dtype=torch.float64),
            torch.eye(3, dtype=torch.float64),
            torch.eye(3, dtype=torch.float64),
            1.0,
            -1.0,
        )


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        RidgeEditFitter(4).update_targets(torch.randn(3, 5), torch.randn(3, 5))


@pytest.mark.parametrize("rank", [1, 3, 6, 9])
def test_truncate_rank_is_the_best_low_rank_approximation(rank):
    g = torch.Generator().manual_seed(rank)
    delta = torch.randn(7, 6, generator=g, dtype=torch.float64)
    up, down = truncate_rank(delta, rank)
    assert up.shape == (7, rank) and down.shape == (rank, 6)
    s = torch.linalg.svdvals(delta)
    error = torch.linalg.matrix_norm(delta - up @ down) ** 2
    assert torch.isclose(error, (s[rank:] ** 2).sum(), atol=1e-9)


def test_rank_for_energy():
    delta = torch.diag(torch.tensor([10.0, 1.0, 0.01], dtype=torch.float64))
    assert rank_for_energy(delta, 0.9) == 1
    assert rank_for_energy(delta, 0.99999) == 2
    assert rank_for_energy(delta, 0.9999999) == 3
    assert rank_for_energy(torch.zeros(3, 3), 0.99) == 1


def _decaying(out: int, dim: int, seed: int) -> torch.Tensor:
    """A matrix with geometrically decaying singular values, like an edit Δ = W G."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(out, dim, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64)).Q
    s = 0.9 ** torch.arange(dim, dtype=torch.float64)
    return (u * s) @ v.T


@pytest.mark.parametrize("rank", [4, 32])
def test_randomised_top_singular_matches_the_full_svd(rank):
    delta = _decaying(320, 200, seed=rank)
    top = top_singular(delta, rank, torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(delta)
    assert torch.allclose(top.s, s[:rank], rtol=1e-9, atol=0)
    up, down = top.factors(rank)
    error = torch.linalg.matrix_norm(delta - up @ down) ** 2
    assert torch.isclose(error, (s[rank:] ** 2).sum(), rtol=1e-8)
    exact = rank_for_energy(delta, 0.9)  # 11
    assert top.rank_for_energy(0.9) == (exact if exact <= rank else rank + 1)
    # seeded: the same factors again, bit for bit
    again = top_singular(delta, rank, torch.Generator().manual_seed(0)).factors(rank)
    assert torch.equal(up, again[0]) and torch.equal(down, again[1])


def test_top_singular_reports_unreached_energy():
    delta = _decaying(100, 80, seed=1)
    top = top_singular(delta, 5, torch.Generator().manual_seed(0))
    assert top.rank_for_energy(0.9999) == 6  # more than the 5 triplets computed
    with pytest.raises(ValueError, match="exceeds"):
        top.factors(8)


def test_target_residual_is_the_missed_fraction_of_the_shift():
    g = torch.Generator().manual_seed(3)
    targets = torch.randn(40, 6, generator=g, dtype=torch.float64)
    anchors = torch.randn(40, 6, generator=g, dtype=torch.float64)
    fitter = RidgeEditFitter(6)
    fitter.update_targets(targets, anchors)
    assert fitter.target_residual(torch.zeros(6, 6, dtype=torch.float64)) == pytest.approx(1.0)
    # the unconstrained least-squares edit misses exactly what no linear map can reach
    edit = torch.linalg.lstsq(targets, anchors - targets).solution.T
    missed = (targets @ edit.T - (anchors - targets)).square().sum() / (
        (anchors - targets).square().sum()
    )
    assert fitter.target_residual(edit) == pytest.approx(float(missed), rel=1e-9)
    assert fitter.target_residual(fitter.solve(0.0, 1e-9).edit) == pytest.approx(
        float(missed), rel=1e-6
    )


def test_fusion_matches_a_least_squares_oracle():
    from ace_erasure.linalg import fuse_deltas

    torch.manual_seed(0)
    d, out = 6, 4
    xs = [torch.randn(d, 5, dtype=torch.float64) for _ in range(2)]
    p = torch.randn(d, 7, dtype=torch.float64)
    deltas = [torch.randn(out, d, dtype=torch.float64) for _ in range(2)]
    lam_p, ridge = 0.5, 0.01
    fused = fuse_deltas(deltas, [x @ x.T for x in xs], p @ p.T, lam_p, ridge)
    # oracle: stack the least-squares rows  Δ [X_1 X_2 √λp P √λ I] ≈ [Δ_1 X_1, Δ_2 X_2, 0, 0]
    system = sum(x @ x.T for x in xs) + lam_p * p @ p.T
    lam = ridge * float(torch.trace(system)) / d
    inputs = torch.cat(
        [xs[0], xs[1], lam_p**0.5 * p, lam**0.5 * torch.eye(d, dtype=torch.float64)], 1
    )
    wanted = torch.cat(
        [deltas[0] @ xs[0], deltas[1] @ xs[1], torch.zeros(out, 7 + d, dtype=torch.float64)], 1
    )
    oracle = torch.linalg.lstsq(inputs.T, wanted.T).solution.T
    assert torch.allclose(fused, oracle, atol=1e-9)


def test_fusion_of_edits_on_separate_inputs_reproduces_each():
    from ace_erasure.linalg import fuse_deltas

    d = 6
    e = torch.eye(d, dtype=torch.float64)
    x1, x2 = e[:, :2], e[:, 2:4]  # two erasures on orthogonal inputs
    d1, d2 = torch.randn(3, d, dtype=torch.float64), torch.randn(3, d, dtype=torch.float64)
    fused = fuse_deltas([d1, d2], [x1 @ x1.T, x2 @ x2.T], e[:, 4:] @ e[:, 4:].T, 1.0, 1e-9)
    assert torch.allclose(fused @ x1, d1 @ x1, atol=1e-6)
    assert torch.allclose(fused @ x2, d2 @ x2, atol=1e-6)
    assert torch.allclose(fused @ e[:, 4:], torch.zeros(3, 2, dtype=torch.float64), atol=1e-6)
