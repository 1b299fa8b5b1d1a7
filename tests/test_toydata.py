"""Tests for `toydata`: samplers, true densities, entropies and energy targets.

The reference values here are computed independently of the code under test: sklearn
outputs, hand-written formulas with `math`, dense Simpson rules and closed forms.
"""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import norm
from sklearn.datasets import make_circles, make_moons, make_swiss_roll

import toydata
from toydata import energy

# The 2-D sets; the higher-dimensional ones of `toydata.mixed` are tested in
# test_toydata_mixed.py.
ALL = toydata.names(dim=2)

# Midpoint grid (half-width, step) per data set for the mass check: the box holds all
# but a negligible tail, and the step is at most the smallest noise scale, where the
# midpoint rule is already accurate far beyond the 1e-3 tolerance.
MASS_GRID = {
    "two_moons": (3.0, 0.05),
    "two_circles": (1.7, 0.03),
    "8gaussians": (6.5, 0.15),
    "pinwheel": (6.5, 0.1),
    "checkerboard": (5.0, 0.25),  # aligned with the squares: exact
    "rings": (3.9, 0.04),
    "2spirals": (4.5, 0.08),
    "swissroll": (4.8, 0.12),
}


def _grid_mass(ds: toydata.ToyDataset, half: float, step: float) -> float:
    ax = np.arange(-half + 0.5 * step, half, step)
    gx, gy = np.meshgrid(ax, ax, indexing="ij")
    lp = ds.log_prob(np.column_stack([gx.ravel(), gy.ravel()]))
    return float(np.exp(lp).sum() * step * step)


def _simpson_weights(a: float, b: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the composite Simpson rule with ``n`` (even) intervals."""
    t = np.linspace(a, b, n + 1)
    w = np.full(n + 1, 2.0)
    w[1::2] = 4.0
    w[[0, -1]] = 1.0
    return t, w * (b - a) / (3.0 * n)


# ------------------------------------------------------------------------ registry


def test_registry_lists_all_datasets():
    assert ALL == sorted(
        [
            "two_moons",
            "two_circles",
            "8gaussians",
            "pinwheel",
            "checkerboard",
            "rings",
            "2spirals",
            "swissroll",
        ]
    )
    assert sorted(toydata.DATASETS) == sorted(ALL + ["mix4", "mix6", "mix8", "mix16"])
    assert toydata.names() == sorted(toydata.DATASETS)
    for name in ALL:
        ds = toydata.get(name)
        assert ds.name == name
        assert ds.dim == 2
        assert ds.description and "\n" not in ds.description


def test_unknown_names_raise_with_known_names():
    with pytest.raises(ValueError, match=r"unknown dataset name 'moons'.*two_moons"):
        toydata.get("moons")
    with pytest.raises(TypeError, match="must be a str"):
        toydata.get(3)
    with pytest.raises(ValueError, match=r"unknown energy target name 'U5'.*U1, U2, U3, U4"):
        energy.get("U5")
    assert energy.names() == ["U1", "U2", "U3", "U4"]


def test_register_refuses_duplicates_and_foreign_objects():
    with pytest.raises(ValueError, match="'rings' is already registered"):
        toydata.register(toydata.Rings())
    with pytest.raises(TypeError, match="dataset must be a ToyDataset"):
        toydata.register("rings")
    assert toydata.names(dim=2) == ALL


def test_toydata_imports_only_numpy_scipy_sklearn_and_stdlib():
    # Static, so it also covers imports inside functions (torch is only looked up in
    # sys.modules, never imported).
    allowed_third_party = {"numpy", "scipy", "sklearn", "toydata"}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in Path(toydata.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                assert top in allowed_third_party or top in stdlib, (path.name, mod)


# ------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("n", [0, -5])
def test_nonpositive_n_raises(n):
    with pytest.raises(ValueError, match=rf"n must be a positive int, got {n}"):
        toydata.get("rings").sample(n)


@pytest.mark.parametrize("n", [2.0, "10", True, None])
def test_non_int_n_raises(n):
    with pytest.raises(TypeError, match="n must be a positive int"):
        toydata.get("two_moons").sample(n)


def test_bad_seed_raises():
    with pytest.raises(ValueError, match="seed must be None or a non-negative int, got -1"):
        toydata.get("8gaussians").sample(5, seed=-1)
    with pytest.raises(TypeError, match="seed must be None"):
        toydata.get("8gaussians").sample(5, seed=1.5)


@pytest.mark.parametrize(
    "x, err, msg",
    [
        (np.zeros(4), ValueError, r"x must have shape \(n, 2\), got shape \(4,\)"),
        (np.zeros((4, 3)), ValueError, r"x must have shape \(n, 2\), got shape \(4, 3\)"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), ValueError, r"x must be finite.*1 of its 2 rows"),
        (np.array([[np.inf, 0.0]]), ValueError, "x must be finite"),
        ([["a", "b"]], TypeError, "x must be a float array"),
    ],
)
def test_bad_points_raise(x, err, msg):
    for name in ("two_moons", "pinwheel"):
        with pytest.raises(err, match=msg):
            toydata.get(name).log_prob(x)


def test_empty_and_list_input():
    ds = toydata.get("two_circles")
    assert ds.log_prob(np.zeros((0, 2))).shape == (0,)
    np.testing.assert_array_equal(ds.log_prob([[0.5, 0.0]]), ds.log_prob(np.array([[0.5, 0.0]])))


# ------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("name", ALL)
def test_sampling_shape_dtype_and_reproducibility(name):
    ds = toydata.get(name)
    a = ds.sample(101, seed=7)
    b = ds.sample(101, seed=7)
    c = ds.sample(101, seed=8)
    assert a.shape == (101, 2) and a.dtype == np.float64
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert ds.sample(np.int64(3), seed=np.int64(1)).shape == (3, 2)


def test_two_moons_is_exactly_sklearn():
    for n, seed in [(1000, 0), (777, 123)]:
        expected = make_moons(n, noise=0.1, random_state=seed)[0]
        np.testing.assert_array_equal(toydata.get("two_moons").sample(n, seed=seed), expected)


def test_two_circles_and_swissroll_are_exactly_sklearn():
    np.testing.assert_array_equal(
        toydata.get("two_circles").sample(501, seed=3),
        make_circles(501, noise=0.06, factor=0.5, random_state=3)[0],
    )
    np.testing.assert_array_equal(
        toydata.get("swissroll").sample(501, seed=3),
        make_swiss_roll(501, noise=1.0, random_state=3)[0][:, [0, 2]] / 5.0,
    )


def test_checkerboard_and_rings_structure():
    x = toydata.get("checkerboard").sample(5000, seed=0)
    u = np.floor(x / 2.0)
    assert np.all((u >= -2) & (u <= 1))
    assert np.all((u[:, 0] + u[:, 1]) % 2 == 0)
    r = np.hypot(*toydata.get("rings").sample(4001, seed=0).T)
    # n // 4 per ring and the remainder on the smallest one; rings are 0.75 = 9.4 noise
    # std apart, so the nearest ring is the true one.
    nearest = np.argmin(np.abs(r[:, None] - np.array([3.0, 2.25, 1.5, 0.75])), axis=1)
    assert np.bincount(nearest).tolist() == [1000, 1000, 1000, 1001]


# ------------------------------------------------------------------------ densities


@pytest.mark.parametrize("name", ALL)
def test_density_integrates_to_one(name):
    half, step = MASS_GRID[name]
    assert _grid_mass(toydata.get(name), half, step) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_entropy_matches_monte_carlo(name):
    ds = toydata.get(name)
    h = ds.entropy()
    assert ds.entropy() == h  # cached
    lp = ds.log_prob(ds.sample(20000, seed=2024))
    assert np.all(np.isfinite(lp))
    mc = -lp.mean()
    se = lp.std(ddof=1) / math.sqrt(lp.size)
    assert abs(mc - h) <= 4.0 * se + 1e-12, (name, h, mc, se)


def test_known_entropies():
    assert toydata.get("checkerboard").entropy() == math.log(32.0)
    # Eight well-separated Gaussians: log 8 + the entropy of one, to within the overlap.
    s = 0.5 / 1.414
    assert toydata.get("8gaussians").entropy() == pytest.approx(
        math.log(8.0) + math.log(2.0 * math.pi * math.e * s * s), abs=0.01
    )


def test_two_moons_log_prob_against_dense_simpson_rule():
    ds = toydata.get("two_moons")
    rng = np.random.default_rng(0)
    x = np.vstack([ds.sample(100, seed=1), rng.uniform([-1.5, -1.0], [2.5, 1.5], (100, 2))])
    t, w = _simpson_weights(0.0, math.pi, 8000)
    s = 0.1
    arcs = [(np.cos(t), np.sin(t)), (1.0 - np.cos(t), 1.0 - np.sin(t) - 0.5)]
    p = np.zeros(len(x))
    for cx, cy in arcs:
        d2 = (x[:, :1] - cx) ** 2 + (x[:, 1:] - cy) ** 2
        p += 0.5 / math.pi * (np.exp(-d2 / (2 * s * s)) / (2 * math.pi * s * s)) @ w
    np.testing.assert_allclose(ds.log_prob(x), np.log(p), rtol=1e-9, atol=1e-9)


def test_rings_closed_form_against_angle_quadrature():
    # The Bessel closed form against the defining integral over the ring angle.
    t, w = _simpson_weights(0.0, 2 * math.pi, 4000)
    x = np.array([[0.0, 0.0], [3.05, 0.1], [-1.0, 1.2], [0.3, -0.6], [4.0, 4.0]])
    s = 0.08
    p = np.zeros(len(x))
    for rad in (3.0, 2.25, 1.5, 0.75):
        d2 = (x[:, :1] - rad * np.cos(t)) ** 2 + (x[:, 1:] - rad * np.sin(t)) ** 2
        p += 0.25 / (2 * math.pi) * (np.exp(-d2 / (2 * s * s)) / (2 * math.pi * s * s)) @ w
    np.testing.assert_allclose(toydata.get("rings").log_prob(x), np.log(p), rtol=1e-9)


def test_2spirals_log_prob_against_dense_simpson_rule():
    ds = toydata.get("2spirals")
    x = np.vstack([ds.sample(20, seed=3), [[0.0, 0.0], [1.0, -2.0], [-3.0, 0.5]]])
    c = 540.0 * 2.0 * math.pi / 360.0
    m, w = _simpson_weights(0.0, c, 60000)
    w = w * 2.0 * m / c**2
    a1, a2, s, h = -np.cos(m) * m / 3.0, np.sin(m) * m / 3.0, 0.1, 0.5 / 3.0

    def g(v, a):  # density of U[a, a + h) + N(0, s^2), symmetric about a + h / 2
        c = -np.abs(v - a - h / 2) / s  # lower tail: no cancellation
        return (ndtr(c + h / (2 * s)) - ndtr(c - h / (2 * s))) / h

    q = [(g(sx * x[:, :1], a1) * g(sx * x[:, 1:], a2)) @ w for sx in (1.0, -1.0)]
    np.testing.assert_allclose(ds.log_prob(x), np.log(0.5 * (q[0] + q[1])), rtol=1e-9, atol=1e-9)


def _pinwheel_brute_log_prob(x: np.ndarray, nodes: int = 200001) -> np.ndarray:
    """Change of variables with every preimage found by a dense scan over r + bisection."""
    r_grid = np.linspace(-2.6, 4.6, nodes)
    out = []
    for y1, y2 in x / 2.0:
        rho, psi = math.hypot(y1, y2), math.atan2(y2, y1)
        total = 0.0
        for k in range(5):
            shift = psi + 2.0 * math.pi * k / 5.0

            def g(r, rho=rho, shift=shift):
                return rho * math.cos(shift + 0.25 * math.exp(r)) - r

            vals = rho * np.cos(shift + 0.25 * np.exp(r_grid)) - r_grid
            for i in np.nonzero(np.sign(vals[:-1]) != np.sign(vals[1:]))[0]:
                lo, hi = r_grid[i], r_grid[i + 1]
                for _ in range(50):
                    mid = 0.5 * (lo + hi)
                    if (g(mid) > 0) == (g(lo) > 0):
                        lo = mid
                    else:
                        hi = mid
                r = 0.5 * (lo + hi)
                ph = 0.25 * math.exp(r)
                tau = rho * math.sin(shift + ph)
                dens = norm.pdf(r, 1.0, 0.3) * norm.pdf(tau, 0.0, 0.1)
                total += dens / (5.0 * 4.0 * abs(1.0 + ph * tau))
        out.append(math.log(total))
    return np.array(out)


def test_pinwheel_log_prob_against_brute_force_preimages():
    ds = toydata.get("pinwheel")
    # Points right next to the fold tau = -4 e^{-r} of blade 0, where two preimages of
    # the same blade lie ~1e-3 apart in r, plus ordinary sample points.
    fold = []
    for r0, frac in [(2.31234, 0.98), (2.01234, 0.99), (2.61234, 0.995)]:
        tau0 = -4.0 * math.exp(-r0) * frac
        a = 0.25 * math.exp(r0)
        fold.append(
            [
                2 * (r0 * math.cos(a) + tau0 * math.sin(a)),
                2 * (-r0 * math.sin(a) + tau0 * math.cos(a)),
            ]
        )
    x = np.vstack([ds.sample(10, seed=5), fold])
    np.testing.assert_allclose(ds.log_prob(x), _pinwheel_brute_log_prob(x), rtol=0, atol=1e-8)


def test_checkerboard_density_values():
    lp = toydata.get("checkerboard").log_prob(
        [[-3.0, -3.0], [-3.0, -1.0], [1.0, 1.0], [1.0, -1.0], [4.5, 0.0], [-4.0, -4.0]]
    )
    c = -math.log(32.0)
    np.testing.assert_array_equal(lp, [c, -np.inf, c, -np.inf, -np.inf, c])


def test_far_points():
    far = np.array([[30.0, -40.0], [0.0, 25.0]])
    for name in ALL:
        lp = toydata.get(name).log_prob(far)
        if name in ("checkerboard", "pinwheel"):
            # Zero density; and pinwheel's documented -inf beyond |x| = 9.2.
            assert np.all(lp == -np.inf), name
        else:
            assert np.all(np.isfinite(lp)) and np.all(lp < -100), name
    lp = toydata.get("pinwheel").log_prob([[9.0, 0.0], [0.0, -9.1]])
    assert np.all(np.isfinite(lp)) and np.all(lp < -60)


# ------------------------------------------------------------------------ energies


def _u_by_hand(name: str, z1: float, z2: float) -> float:
    w1 = math.sin(2 * math.pi * z1 / 4)
    if name == "U1":
        r = math.sqrt(z1 * z1 + z2 * z2)
        a = math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2)
        b = math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        return 0.5 * ((r - 2) / 0.4) ** 2 - math.log(a + b)
    if name == "U2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "U3":
        w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
        a = math.exp(-0.5 * ((z2 - w1) / 0.35) ** 2)
        b = math.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
        return -math.log(a + b)
    w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
    a = math.exp(-0.5 * ((z2 - w1) / 0.4) ** 2)
    b = math.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
    return -math.log(a + b)


POINTS = [(0.0, 0.0), (1.0, -0.5), (2.5, 1.5), (-1.2, 0.3), (0.5, 0.7)]


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_energy_matches_hand_formula(name):
    got = energy.get(name).energy(np.array(POINTS))
    expected = [_u_by_hand(name, *p) for p in POINTS]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_energy_hand_values_at_origin():
    # Fully by hand: at z = 0, w1 = 0, w2 = 3 e^{-1/0.72}, w3 = 3 sigmoid(-1/0.3).
    assert energy.get("U1").energy([0.0, 0.0]) == pytest.approx(
        12.5 + 0.5 * (2 / 0.6) ** 2 - math.log(2.0), rel=1e-13
    )
    assert energy.get("U2").energy([0.0, 0.0]) == 0.0
    w2 = 3 * math.exp(-1 / 0.72)
    assert energy.get("U3").energy([0.0, 0.0]) == pytest.approx(
        -math.log(1 + math.exp(-0.5 * (w2 / 0.35) ** 2)), rel=1e-13
    )


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_energy_numpy_and_torch_agree(name):
    torch = pytest.importorskip("torch")
    target = energy.get(name)
    z = np.random.default_rng(1).uniform(-4, 4, size=(64, 2))
    z[0] = 0.0  # U1's norm at the origin: value and gradient must stay finite
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    ut = target.energy(zt)
    np.testing.assert_allclose(ut.detach().numpy(), target.energy(z), rtol=1e-13, atol=1e-13)
    ut.sum().backward()
    assert torch.isfinite(zt.grad).all()
    lpt = target.log_prob(zt.detach())
    np.testing.assert_allclose(lpt.numpy(), target.log_prob(z), rtol=1e-13)
    z32 = torch.tensor(z, dtype=torch.float32)
    assert target.energy(z32).dtype == torch.float32
    assert target.log_prob(z32).dtype == torch.float32
    assert target.log_prob(torch.tensor([[5.0, 0.0]])).item() == -math.inf


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_log_normalizer_is_converged(name):
    target = energy.get(name)
    assert target.box == ((-4.0, 4.0), (-4.0, 4.0))
    base = target.log_normalizer()
    assert target.log_normalizer(16) == base
    assert abs(target.log_normalizer(32) - base) < 1e-6


def test_log_normalizer_u2_closed_form():
    # U2 is a Gaussian ridge in z2 of std 0.4 around sin(pi z1 / 2), |sin| <= 1, so on
    # [-4, 4]^2 the z2-integral is 0.4 sqrt(2 pi) up to tails < e^-28.
    assert energy.get("U2").log_normalizer() == pytest.approx(
        math.log(8 * 0.4 * math.sqrt(2 * math.pi)), abs=1e-12
    )


def test_energy_log_prob_box_and_normalisation():
    target = energy.get("U3")
    z = np.array([[0.0, 0.0], [4.0, 4.0], [4.0001, 0.0], [0.0, -5.0]])
    lp = target.log_prob(z)
    np.testing.assert_allclose(lp[:2], -target.energy(z[:2]) - target.log_normalizer())
    assert np.all(lp[2:] == -np.inf)
    # Independent check of the normaliser: midpoint rule on a fine grid.
    ax = np.linspace(-4, 4, 801)[:-1] + 0.005
    gx, gy = np.meshgrid(ax, ax, indexing="ij")
    mass = np.exp(target.log_prob(np.stack([gx, gy], axis=-1))).sum() * 0.01**2
    assert mass == pytest.approx(1.0, abs=1e-4)


def test_energy_bad_inputs():
    target = energy.get("U1")
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 2\), got shape \(3, 3\)"):
        target.energy(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="z must be finite"):
        target.energy([[np.nan, 0.0]])
    with pytest.raises(TypeError, match="z must be a float array"):
        target.energy("abc")
    with pytest.raises(ValueError, match="panels must be a positive int"):
        target.log_normalizer(0)


def test_two_moons_conditionals_mix_to_the_marginal_and_name_the_moon():
    moons = toydata.get("two_moons")
    x, label = moons.sample_with_labels(4000, seed=3)
    np.testing.assert_array_equal(x, moons.sample(4000, seed=3))
    outer, inner = moons.conditional_log_prob(x, 0), moons.conditional_log_prob(x, 1)
    # p(x) = ½ p(x | outer) + ½ p(x | inner): an independent check of each conditional.
    np.testing.assert_allclose(np.logaddexp(outer, inner) + np.log(0.5), moons.log_prob(x),
                               rtol=0, atol=1e-12)
    assert ((inner > outer) == (label == 1)).mean() > 0.99
    np.testing.assert_array_equal(moons.conditional_log_prob(x, label),
                                  np.where(label == 1, inner, outer))
    with pytest.raises(ValueError, match="label must be 0"):
        moons.conditional_log_prob(x[:3], 2)
