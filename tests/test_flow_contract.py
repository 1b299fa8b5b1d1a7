"""The contract every flow keeps, one test per property parametrised over every flow.

As zuko's ``tests/test_flows.py``: shapes in the ``torch.distributions`` vocabulary, the
inverse round trip, the log-density against ``slogdet`` of the autograd Jacobian, gradients
to every parameter, save/load, and mass 1 on a grid. Every registered flow
(``cnflow.flows.FLOWS``) has at least one case here, so a newly registered flow cannot
skip the contract.

All cases are 2-D, float64, small, and moved well away from their (near-identity)
initialisation, with a non-trivial data (and context) standardisation, so that every
parameter and buffer takes part. Tolerances: a CNF's ``log_prob`` is an ODE solve at
``eval_rtol = eval_atol = 1e-9``, which holds its values to ~1e-8; planar inverses solve
to 1e-10 and radial inverses are closed form, so those agree to ~1e-12.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from flow_checks import brute_force_log_prob

from cnflow.flows import FLOWS, Flow, get_flow, register_flow

F64 = torch.float64
DIM = 2
CONTEXT_DIM = 2
#: Context rows in the conditional cases: a batch shape ``(4,)`` that samples broadcast to.
CONTEXTS = 4


@dataclass(frozen=True)
class Case:
    """One flow to check: a registered builder, its options, and how far to move it from
    its initialisation (std of the random parameters, or a strength for the layer flows)."""

    name: str
    flow: str
    options: dict[str, Any] = field(default_factory=dict)
    scale: float = 0.4
    atol: float = 1e-7  # agreement of two evaluations of the same quantity
    grid: tuple[float, int] = (8.0, 161)  # half-width and nodes per axis of the mass grid

    @property
    def context_dim(self) -> int:
        return self.options.get("context_dim", 0)

    def build(self, seed: int = 0) -> Flow:
        """The flow, untrained (as a fresh run would build it), in float64."""
        torch.manual_seed(seed)
        return get_flow(self.flow)(DIM, **self.options).double()


_CNF = {"eval_rtol": 1e-9, "eval_atol": 1e-9}
CASES = [
    Case("gated_cnf", "gated_cnf", {"width": 8, "hidden": 8, **_CNF}),
    Case("concat_squash_cnf", "concat_squash_cnf",
         {"hidden": (16, 16), "trace": "exact", **_CNF}, scale=0.3),
    Case("conditional_cnf", "gated_cnf",
         {"width": 8, "hidden": 8, "context_dim": CONTEXT_DIM, **_CNF}, scale=0.3),
    # Planar densities have sharp ridges where a layer nearly folds and, in the
    # normalizing direction, wider tails: a larger, finer grid.
    *(Case(f"planar_{direction}", "planar", {"layers": 6, "direction": direction},
           scale=0.6, atol=1e-9, grid=(12.0, 673)) for direction in ("generative", "normalizing")),
    *(Case(f"radial_{direction}", "radial", {"layers": 6, "direction": direction},
           scale=0.6, atol=1e-9) for direction in ("generative", "normalizing")),
]


def _randomize(flow: Flow, case: Case, seed: int = 0) -> None:
    """Parameters well away from the identity, but not near-singular."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if name.endswith(("alpha_raw", "beta_raw")):  # radial: keep α, α + β of order 1
                p.add_(noise * 0.5 * case.scale)
            elif name.endswith(".z0"):  # radial centres near the data
                p.add_(noise * 1.3 * case.scale)
            else:  # CNF weights; planar u, w, b
                p.copy_(noise * case.scale)


def _data(n: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    spread = torch.linspace(1.3, 0.8, width, dtype=F64)
    return torch.randn(n, width, generator=generator, dtype=F64) * spread + 0.2


def _flow(case: Case) -> Flow:
    """The case's flow, moved from its initialisation and standardised, in eval mode."""
    flow = case.build()
    _randomize(flow, case)
    context = _data(256, case.context_dim, 2) if case.context_dim else None
    flow.set_normalization(_data(256, DIM, 1), context)
    return flow.eval()


def _context(case: Case, rows: int = CONTEXTS) -> torch.Tensor | None:
    return _data(rows, case.context_dim, 3) if case.context_dim else None


def _kwargs(context: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {} if context is None else {"context": context}


def _rows(case: Case, context: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """One context row per point for ``to_base``/``from_base`` (None when unconditional)."""
    return None if context is None else context[torch.arange(n) % len(context)]


parametrize = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def test_every_registered_flow_has_a_case():
    assert {case.flow for case in CASES} == set(FLOWS)
    assert any(case.context_dim for case in CASES)


def test_registry_refuses_unknown_and_duplicate_names():
    with pytest.raises(ValueError, match=r"unknown flow 'nf'; known flows: .*planar, radial"):
        get_flow("nf")
    with pytest.raises(ValueError, match="'planar' is already registered"):
        register_flow("planar", FLOWS["radial"])
    with pytest.raises(TypeError, match="builder must be callable"):
        register_flow("other", "planar")
    assert FLOWS["planar"] is not FLOWS["radial"]


@parametrize
def test_shapes_follow_torch_distributions(case: Case):
    """``sample(shape, context=c)`` is ``(*shape, *c.shape[:-1], dim)``; ``log_prob``
    broadcasts the batch shapes of ``x`` and ``c``."""
    flow = _flow(case)
    c = _context(case)
    batch = () if c is None else c.shape[:-1]
    assert flow.event_shape == (DIM,)
    assert flow.sample((), **_kwargs(c)).shape == (*batch, DIM)
    sample = flow.sample((2, 3), **_kwargs(c))
    assert sample.shape == (2, 3, *batch, DIM) and not sample.requires_grad
    assert flow.rsample(5, **_kwargs(c)).requires_grad
    x, log_p = flow.sample_and_log_prob(3, **_kwargs(c))
    assert x.shape == (3, *batch, DIM) and log_p.shape == (3, *batch)
    torch.testing.assert_close(flow.log_prob(x, **_kwargs(c)), log_p, rtol=0, atol=case.atol)
    # x of shape (3, 1, D) against c of shape (4, k), or x of shape (3, 4, D) alone: (3, 4).
    points = _data(12, DIM, 4).reshape(3, CONTEXTS, DIM)
    if c is None:
        grid, entry = flow.log_prob(points), flow.log_prob(points[2, 1])
    else:
        points = points[:, :1]
        grid, entry = flow.log_prob(points, c), flow.log_prob(points[2, 0], c[1])
    assert grid.shape == (3, CONTEXTS) and entry.shape == ()
    torch.testing.assert_close(grid[2, 1], entry, rtol=0, atol=case.atol)


@parametrize
def test_inverse_round_trip(case: Case):
    flow = _flow(case)
    x = _data(8, DIM, 5)
    rows = _rows(case, _context(case), len(x))
    with torch.no_grad():
        z, log_det = flow.to_base(x, **_kwargs(rows))
        back, inverse_log_det = flow.from_base(z, **_kwargs(rows))
    torch.testing.assert_close(back, x, rtol=0, atol=case.atol)
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=0, atol=case.atol)


@parametrize
def test_log_prob_matches_slogdet_of_the_autograd_jacobian(case: Case):
    """``log p(x) = log N(z) + log|det ∂z/∂x|`` with the full Jacobian from autograd."""
    flow = _flow(case)
    x = _data(4, DIM, 6) * 1.2
    rows = _rows(case, _context(case), len(x))
    with torch.no_grad():
        exact = flow.log_prob(x, **_kwargs(rows))
    # The Jacobian is differentiated through the solver, a step less accurate than a solve.
    torch.testing.assert_close(exact, brute_force_log_prob(flow, x, rows), rtol=0,
                               atol=10 * case.atol)


@parametrize
def test_gradients_reach_every_parameter(case: Case):
    """Maximum likelihood differentiates ``log_prob``, reverse KL ``sample_and_log_prob``:
    both must reach every parameter, in the flow's training configuration."""
    flow = _flow(case).train()
    c = _context(case)
    x = _data(16, DIM, 7)
    if c is not None:
        x = x.reshape(4, CONTEXTS, DIM)
    samples, log_q = flow.sample_and_log_prob(8, **_kwargs(c))
    loss = (log_q + samples.pow(2).sum(-1)).mean() - flow.log_prob(x, **_kwargs(c)).mean()
    loss.backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@parametrize
def test_state_dict_round_trip_gives_the_same_log_prob(case: Case):
    flow = _flow(case)
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    other = case.build(seed=1)  # other random weights, no normalisation
    other.load_state_dict(torch.load(buffer, weights_only=True))
    other.eval()
    c = _context(case)
    x = _data(CONTEXTS, DIM, 8)
    with torch.no_grad():
        assert torch.equal(other.log_prob(x, **_kwargs(c)), flow.log_prob(x, **_kwargs(c)))


@parametrize
def test_set_normalization_standardises_data_and_context(case: Case):
    flow = case.build()
    data = _data(300, DIM, 9)
    context = _data(300, case.context_dim, 10) if case.context_dim else None
    flow.set_normalization(data, context)
    standardised = flow.normalize(data)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(DIM, dtype=F64))
    torch.testing.assert_close(standardised.std(0), torch.ones(DIM, dtype=F64))
    torch.testing.assert_close(flow.denormalize(standardised), data)
    if context is not None:
        context_standardised = flow.normalize_context(context)
        torch.testing.assert_close(context_standardised.std(0),
                                   torch.ones(case.context_dim, dtype=F64))


def _grid_mass(log_prob: Callable[[torch.Tensor], torch.Tensor], half_width: float,
               points: int) -> tuple[float, float]:
    """Riemann sums of ``exp(log_prob)`` on ``[-half_width, half_width]²``: on the grid of
    ``points²`` nodes and on every other node of it (twice the step)."""
    axis = torch.linspace(-half_width, half_width, points, dtype=F64)
    step = float(axis[1] - axis[0])
    density = log_prob(torch.cartesian_prod(axis, axis)).exp().reshape(points, points)
    fine = float(density.sum()) * step**2
    coarse = float(density[::2, ::2].sum()) * (2 * step) ** 2
    return fine, coarse


@parametrize
def test_mass_one_on_a_grid(case: Case):
    """The density integrates to 1 (for a fixed context, in the conditional case).

    The Riemann sum of a smooth density that is negligible at the edge of the box
    converges faster than any power of the step, so the difference from the sum at twice
    the step bounds its error; the test asserts that the grid is that well resolved
    (< 1e-4) before it asserts the mass. What is left is the mass outside the box (< 1e-5
    for these cases: the box reaches 6 or more standard deviations of the data) and the
    solver's relative error on the density (~1e-8): well below the tolerance of 1e-3,
    which still catches a log-determinant off by 1e-3 nats wherever the mass is.
    """
    flow = _flow(case)
    c = _context(case, rows=1)

    @torch.no_grad()
    def log_prob(points: torch.Tensor) -> torch.Tensor:
        if c is None:
            return flow.log_prob(points)
        return flow.log_prob(points, c[0])

    fine, coarse = _grid_mass(log_prob, *case.grid)
    assert abs(fine - coarse) < 1e-4, (fine, coarse)
    assert fine == pytest.approx(1.0, abs=1e-3)
