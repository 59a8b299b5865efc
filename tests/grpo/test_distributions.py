"""The Beta action distribution against closed forms, numerical integration and Monte Carlo."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Beta

from envs.api import BackendSpec
from grpo.distributions import RAW_EPS, BetaActions, raw_to_control

ALPHA = torch.tensor([[2.5, 1.5], [1.2, 4.0]], dtype=torch.float64)
BETA = torch.tensor([[1.2, 3.0], [2.0, 1.1]], dtype=torch.float64)


def _repeat(actions_alpha: torch.Tensor, actions_beta: torch.Tensor, row: int, n: int) -> BetaActions:
    """n copies of row ``row``, for Monte Carlo over one distribution."""
    return BetaActions(actions_alpha[row].expand(n, 2), actions_beta[row].expand(n, 2))


def test_log_prob_matches_the_closed_form_density():
    raw = torch.tensor([[0.3, 0.8], [0.05, 0.99]], dtype=torch.float64)
    # log Beta(x; a, b) = (a - 1) log x + (b - 1) log(1 - x) - (lgamma(a) + lgamma(b) - lgamma(a + b)),
    # summed over the two dimensions.
    log_norm = torch.lgamma(ALPHA) + torch.lgamma(BETA) - torch.lgamma(ALPHA + BETA)
    expected = ((ALPHA - 1) * raw.log() + (BETA - 1) * torch.log1p(-raw) - log_norm).sum(-1)
    torch.testing.assert_close(BetaActions(ALPHA, BETA).log_prob(raw), expected)
    torch.testing.assert_close(BetaActions(ALPHA, BETA).log_prob(raw), Beta(ALPHA, BETA).log_prob(raw).sum(-1))


def test_marked_dimensions_sum_only_their_terms():
    # A step that samples steer afresh but holds the acceleration counts steer's density alone; a mask per
    # row works too. Entropy and KL follow the same mask.
    actions, other = BetaActions(ALPHA, BETA), BetaActions(BETA, ALPHA)
    raw = torch.tensor([[0.3, 0.8], [0.05, 0.99]], dtype=torch.float64)
    per_dim = Beta(ALPHA, BETA).log_prob(raw)
    steer_only = torch.tensor([False, True])
    torch.testing.assert_close(actions.log_prob(raw, steer_only), per_dim[:, 1])
    rows = torch.tensor([[True, False], [True, True]])
    torch.testing.assert_close(actions.log_prob(raw, rows), torch.stack([per_dim[0, 0], per_dim[1].sum()]))
    torch.testing.assert_close(actions.entropy(steer_only), Beta(ALPHA, BETA).entropy()[:, 1])
    torch.testing.assert_close(actions.kl(other, rows)[0], actions.kl(other, torch.tensor([True, False]))[0])
    assert actions.log_prob(raw, torch.tensor([False, False])).eq(0).all()


def test_density_integrates_to_one():
    # The product density of row 0 on a 401 x 401 grid over [0, 1]^2, trapezoid rule in each dimension
    # (its error, ~1e-3, comes from the infinite slope of (1 - x)^0.2 at 1, beta = 1.2).
    points = 401
    grid = torch.linspace(0.0, 1.0, points, dtype=torch.float64).clamp(RAW_EPS, 1 - RAW_EPS)
    x0, x1 = torch.meshgrid(grid, grid, indexing="ij")
    raw = torch.stack([x0.reshape(-1), x1.reshape(-1)], dim=-1)
    density = _repeat(ALPHA, BETA, 0, raw.shape[0]).log_prob(raw).exp().reshape(points, points)
    integral = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
    assert integral.item() == pytest.approx(1.0, abs=2e-3)


def test_entropy_matches_monte_carlo():
    # H = -E[log p(x)]; with 20k samples the Monte Carlo standard error is ~0.005.
    n = 20_000
    for row in range(2):
        actions = _repeat(ALPHA, BETA, row, n)
        raw = actions.sample(torch.Generator().manual_seed(row))
        monte_carlo = -actions.log_prob(raw).mean()
        assert actions.entropy()[0].item() == pytest.approx(monte_carlo.item(), abs=0.02)


def test_analytic_kl_matches_monte_carlo():
    # KL(p || q) = E_p[log p(x) - log q(x)], p = row 0, q = a nearby policy; KL ~ 0.27, standard error ~0.003.
    n = 20_000
    p = _repeat(ALPHA, BETA, 0, n)
    q_alpha = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    q_beta = torch.tensor([[1.5, 2.5]], dtype=torch.float64)
    q = _repeat(q_alpha, q_beta, 0, n)
    raw = p.sample(torch.Generator().manual_seed(7))
    monte_carlo = (p.log_prob(raw) - q.log_prob(raw)).mean()
    analytic = p.kl(q)
    assert analytic.shape == (n,)
    assert analytic[0].item() == pytest.approx(monte_carlo.item(), abs=0.015)
    assert p.kl(p)[0].item() == pytest.approx(0.0, abs=1e-12)


def test_mode_is_the_beta_mode_inside_the_unit_interval():
    mode = BetaActions(ALPHA, BETA).mode()
    # (a - 1) / (a + b - 2): row 0: 1.5 / 1.7, 0.5 / 2.5; row 1: 0.2 / 1.2, 3.0 / 3.1.
    expected = torch.tensor([[1.5 / 1.7, 0.5 / 2.5], [0.2 / 1.2, 3.0 / 3.1]], dtype=torch.float64)
    torch.testing.assert_close(mode, expected)
    assert bool(((mode > 0) & (mode < 1)).all())


def test_mode_of_flat_and_one_sided_concentrations_stays_valid():
    # alpha = beta = 1: flat density, mode 0/0 -> the centre 0.5.
    # alpha = 1, beta = 2: mode 0 -> clamped to RAW_EPS so its log_prob is finite.
    actions = BetaActions(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 2.0]]))
    mode = actions.mode()
    torch.testing.assert_close(mode, torch.tensor([[0.5, RAW_EPS]]))
    assert torch.isfinite(actions.log_prob(mode)).all()


@pytest.mark.parametrize(
    ("raw", "control"),
    [
        ([0.5, 0.5], [0.0, 0.0, 0.0]),  # centre: coast, straight
        ([1.0, 1.0], [1.0, 0.0, 1.0]),  # full throttle, full right
        ([0.0, 0.0], [0.0, 1.0, -1.0]),  # full brake, full left
        ([0.75, 0.25], [0.5, 0.0, -0.5]),  # a = 0.5: half throttle; steer 2 * 0.25 - 1
        ([0.25, 0.6], [0.0, 0.5, 0.2]),  # a = -0.5: half brake, never throttle and brake together
    ],
)
def test_raw_to_control(raw, control):
    result = raw_to_control(torch.tensor([raw]))
    torch.testing.assert_close(result, torch.tensor([control]))
    torch.testing.assert_close(BetaActions.raw_to_control(torch.tensor([raw])), result)


def test_same_seed_gives_same_samples_without_touching_the_global_rng():
    actions = BetaActions(ALPHA, BETA)
    global_state = torch.get_rng_state()
    first = actions.sample(torch.Generator().manual_seed(123))
    second = actions.sample(torch.Generator().manual_seed(123))
    other = actions.sample(torch.Generator().manual_seed(124))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_samples_without_generator_are_torch_beta_samples():
    # Pins that sample() draws exactly what torch.distributions.Beta draws (same op, same RNG stream).
    torch.manual_seed(5)
    ours = BetaActions(ALPHA, BETA).sample()
    torch.manual_seed(5)
    theirs = Beta(ALPHA, BETA).sample().clamp(RAW_EPS, 1 - RAW_EPS)
    assert torch.equal(ours, theirs)


def test_samples_lie_in_the_clamped_open_interval():
    raw = _repeat(ALPHA, BETA, 1, 10_000).sample(torch.Generator().manual_seed(0))
    assert raw.shape == (10_000, 2)
    assert bool(((raw >= RAW_EPS) & (raw <= 1 - RAW_EPS)).all())
    assert not raw.requires_grad


def test_log_prob_and_entropy_are_differentiable_in_the_concentrations():
    alpha = ALPHA.clone().requires_grad_(True)
    beta = BETA.clone().requires_grad_(True)
    actions = BetaActions(alpha, beta)
    (actions.log_prob(actions.sample()).sum() + actions.entropy().sum()).backward()
    assert torch.isfinite(alpha.grad).all() and torch.isfinite(beta.grad).all()


def test_wrong_shapes_raise():
    with pytest.raises(ValueError, match=r"\[N, action_dim\]"):
        BetaActions(torch.ones(3, 3) * 2, torch.ones(3, 2) * 2)  # alpha and beta disagree
    with pytest.raises(ValueError, match=r"\[N, action_dim\]"):
        BetaActions(torch.ones(3) * 2, torch.ones(3) * 2)  # no batch dimension
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        raw_to_control(torch.zeros(4))


def test_box_action_mapping():
    from grpo.distributions import ActionMapping, action_mapping_for

    mapping = ActionMapping("box", (-2.0, 0.0), (2.0, 10.0))
    raw = torch.tensor([[0.0, 0.5], [1.0, 0.1]])
    # each dimension maps affinely: u=0 -> low, u=1 -> high
    assert mapping.to_env(raw).tolist() == [[-2.0, 5.0], [2.0, 1.0]]
    assert mapping.raw_dim == 2
    with pytest.raises(ValueError, match="high > low"):
        ActionMapping("box", (1.0,), (1.0,))

    class Backend:
        def __init__(self, spec: BackendSpec):
            self.spec = spec

    box = action_mapping_for(Backend(BackendSpec("gym", action_low=(-1.0,), action_high=(1.0,), driving=False)))
    assert (box.kind, box.low, box.high) == ("box", (-1.0,), (1.0,))
    assert action_mapping_for(Backend(BackendSpec("sim"))).kind == "driving"
