"""Tests for `toydata.mixed`: rotated products of independent 2-D blocks, D = 4..16.

The references are computed here from the documented construction (scipy's ortho_group,
numpy's SeedSequence and the 2-D sets' own samplers and densities), not by the code
under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import ortho_group

import toydata
from toydata import MixedBlocks

# name -> blocks, as documented; the dimension is twice the number of blocks.
SPEC = {
    "mix4": ["two_moons", "8gaussians"],
    "mix6": ["two_circles", "checkerboard", "rings"],
    "mix8": ["two_moons", "two_circles", "8gaussians", "rings"],
    "mix16": [
        "two_moons",
        "two_circles",
        "8gaussians",
        "checkerboard",
        "rings",
        "pinwheel",
        "swissroll",
        "two_moons",
    ],
}
MIXED = sorted(SPEC)


def _blockwise_log_prob(name: str, x: np.ndarray) -> np.ndarray:
    """Unmix with Q^T by hand and sum the 2-D blocks' log-densities."""
    ds = toydata.get(name)
    z = np.asarray(x, dtype=np.float64) @ ds.mixing  # rows: z = Q^T x
    return sum(
        toydata.get(block).log_prob(z[:, 2 * i : 2 * i + 2]) for i, block in enumerate(SPEC[name])
    )


# ------------------------------------------------------------------------ registry


def test_registry_holds_the_mixed_sets():
    assert set(MIXED) <= set(toydata.names())
    assert toydata.names(dim=2) == sorted(set(toydata.names()) - set(MIXED))
    for name, blocks in SPEC.items():
        ds = toydata.get(name)
        assert isinstance(ds, MixedBlocks) and isinstance(ds, toydata.ToyDataset)
        assert ds.name == name
        assert ds.dim == 2 * len(blocks) == int(name[3:])
        assert [b.name for b in ds.blocks] == blocks
        assert all(b is toydata.get(b.name) for b in ds.blocks)
        assert ds.description and "\n" not in ds.description
        assert toydata.names(dim=ds.dim) == [name]
        assert name in repr(ds)
    with pytest.raises(TypeError, match="dim must be None or an int"):
        toydata.names(dim="4")


def test_cli_datasets_lists_the_dimension():
    from click.testing import CliRunner
    from cnflow.cli.main import cli

    result = CliRunner().invoke(cli, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(toydata.names())
    for name, row in rows.items():
        assert row["dim"] == toydata.get(name).dim
    assert rows["mix6"]["entropy_floor"] == pytest.approx(toydata.get("mix6").entropy())
    table = CliRunner().invoke(cli, ["datasets"])
    assert table.exit_code == 0 and " dim " in table.output.splitlines()[0]
    assert any(line.split()[:2] == ["mix16", "16"] for line in table.output.splitlines())


# ------------------------------------------------------------------------ mixing matrix


@pytest.mark.parametrize("name", MIXED)
def test_mixing_matrix_is_fixed_and_orthogonal(name):
    ds = toydata.get(name)
    q = ds.mixing
    assert q.shape == (ds.dim, ds.dim) and q.dtype == np.float64
    assert not q.flags.writeable
    np.testing.assert_array_equal(q, ortho_group.rvs(ds.dim, random_state=ds.mixing_seed))
    eye = np.eye(ds.dim)
    assert np.abs(q.T @ q - eye).max() < 1e-12
    assert np.abs(q @ q.T - eye).max() < 1e-12
    assert abs(np.linalg.slogdet(q)[1]) < 1e-12  # |det Q| = 1
    # Really mixing: no coordinate is (close to) one block's own axis.
    assert np.abs(q).max() < 0.99


# ------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("name", MIXED)
def test_sampling_shape_dtype_and_reproducibility(name):
    ds = toydata.get(name)
    a = ds.sample(257, seed=7)
    b = ds.sample(257, seed=7)
    c = ds.sample(257, seed=8)
    assert a.shape == (257, ds.dim) and a.dtype == np.float64
    assert a.flags.c_contiguous and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.any(np.all(a == c, axis=0))
    assert ds.sample(np.int64(3), seed=np.int64(1)).shape == (3, ds.dim)
    assert not np.array_equal(ds.sample(5), ds.sample(5))  # seed=None: fresh entropy


@pytest.mark.parametrize("name", ["mix4", "mix16"])
def test_samples_follow_the_documented_construction(name):
    ds = toydata.get(name)
    n, seed = 300, 11
    children = np.random.SeedSequence(seed).spawn(len(SPEC[name]))
    z = np.hstack(
        [
            toydata.get(block).sample(n, seed=int(child.generate_state(1)[0]))
            for block, child in zip(SPEC[name], children)
        ]
    )
    np.testing.assert_allclose(ds.sample(n, seed=seed), z @ ds.mixing.T, rtol=0, atol=1e-13)
    # Repeated blocks (two_moons twice in mix16) are drawn independently.
    if name == "mix16":
        assert not np.allclose(z[:, :2], z[:, 14:])


# ------------------------------------------------------------------------ densities


@pytest.mark.parametrize("name", MIXED)
def test_log_prob_is_the_sum_of_the_unmixed_blocks(name):
    ds = toydata.get(name)
    rng = np.random.default_rng(3)
    x = np.vstack(
        [
            ds.sample(200, seed=5),
            rng.normal(scale=2.0, size=(100, ds.dim)),
            np.full((1, ds.dim), 30.0),  # far away
        ]
    )
    lp = ds.log_prob(x)
    assert lp.shape == (len(x),) and lp.dtype == np.float64
    expected = _blockwise_log_prob(name, x)
    np.testing.assert_array_equal(np.isfinite(lp), np.isfinite(expected))
    np.testing.assert_array_equal(lp[~np.isfinite(lp)], expected[~np.isfinite(expected)])
    fin = np.isfinite(lp)
    np.testing.assert_allclose(lp[fin], expected[fin], rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(lp[:200]))
    if "checkerboard" in SPEC[name] or "pinwheel" in SPEC[name]:
        assert lp[-1] == -np.inf  # zero density of a block: zero density
    # unmix is Q^T x, the point's block coordinates.
    np.testing.assert_allclose(ds.unmix(x), x @ ds.mixing, rtol=0, atol=0)
    # Lists, and no points.
    np.testing.assert_allclose(ds.log_prob(x[:3].tolist()), lp[:3], rtol=1e-12)
    assert ds.log_prob(np.zeros((0, ds.dim))).shape == (0,)


@pytest.mark.parametrize("name", MIXED)
def test_entropy_is_the_sum_of_the_blocks_and_matches_monte_carlo(name):
    ds = toydata.get(name)
    h = ds.entropy()
    assert h == pytest.approx(sum(toydata.get(b).entropy() for b in SPEC[name]), abs=1e-12)
    lp = ds.log_prob(ds.sample(20000, seed=2024))
    assert np.all(np.isfinite(lp))
    mc = -lp.mean()
    se = lp.std(ddof=1) / math.sqrt(lp.size)
    assert abs(mc - h) <= 4.0 * se, (name, h, mc, se)


def test_mix4_change_of_variables_against_the_blocks():
    """In D = 4 a 4-D quadrature is out of reach; check p(Q z) = p1(z1) p2(z2) instead.

    Pointwise at rotated block samples, and by integrating mix4's density over the plane
    of one block (the other block's coordinates fixed): a 2-D quadrature that must give
    the other block's density, i.e. the rotated density has the product's marginals.
    """
    ds = toydata.get("mix4")
    q = ds.mixing
    moons, gauss = toydata.get("two_moons"), toydata.get("8gaussians")
    z1, z2 = moons.sample(500, seed=1), gauss.sample(500, seed=2)
    x = np.hstack([z1, z2]) @ q.T
    np.testing.assert_allclose(
        ds.log_prob(x), moons.log_prob(z1) + gauss.log_prob(z2), rtol=0, atol=1e-10
    )

    def plane(half: float, step: float) -> np.ndarray:
        ax = np.arange(-half + 0.5 * step, half, step)
        gx, gy = np.meshgrid(ax, ax, indexing="ij")
        return np.column_stack([gx.ravel(), gy.ravel()])

    # Midpoint rule; the grids hold all but a negligible tail, and their steps are at
    # most half the noise std, where the rule converges spectrally.
    step = 0.1
    grid = plane(6.5, step)  # the 8gaussians block
    for a in ([0.0, 1.0], [1.0, -0.4], [0.5, 0.25], [-0.9, 0.2]):
        pts = np.asarray(a) @ q[:, :2].T + grid @ q[:, 2:].T
        marginal = np.exp(ds.log_prob(pts)).sum() * step * step
        assert marginal == pytest.approx(math.exp(moons.log_prob([a])[0]), rel=1e-8), a
    step = 0.05
    grid = plane(3.0, step)  # the two_moons block
    for b in ([2.83, 0.0], [2.0, 2.0], [0.0, 0.0], [-1.0, -2.5]):
        pts = grid @ q[:, :2].T + np.asarray(b) @ q[:, 2:].T
        marginal = np.exp(ds.log_prob(pts)).sum() * step * step
        assert marginal == pytest.approx(math.exp(gauss.log_prob([b])[0]), rel=1e-8), b


def test_custom_mixed_set():
    # Any ToyDataset can be a block, a mixed one included (D = 4 + 2).
    inner = toydata.get("mix4")
    ds = MixedBlocks("custom", [inner, toydata.get("rings")], mixing_seed=0)
    assert ds.dim == 6 and ds.slices == (slice(0, 4), slice(4, 6))
    assert "mix4, rings" in ds.description
    x = ds.sample(50, seed=0)
    z = x @ ds.mixing
    expected = inner.log_prob(z[:, :4]) + toydata.get("rings").log_prob(z[:, 4:])
    np.testing.assert_allclose(ds.log_prob(x), expected, rtol=1e-12, atol=1e-12)
    assert ds.entropy() == pytest.approx(inner.entropy() + toydata.get("rings").entropy())
    assert "custom" not in toydata.names()


# ------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "x, err, msg",
    [
        (np.zeros((5, 2)), ValueError, r"x must have shape \(n, 6\), got shape \(5, 2\)"),
        (np.zeros((5, 7)), ValueError, r"x must have shape \(n, 6\), got shape \(5, 7\)"),
        (np.zeros(6), ValueError, r"x must have shape \(n, 6\), got shape \(6,\)"),
        (np.zeros((2, 3, 6)), ValueError, r"x must have shape \(n, 6\)"),
        (
            np.array([[0.0] * 5 + [np.nan]] + [[1.0] * 6] * 2),
            ValueError,
            r"x must be finite.*1 of its 3 rows",
        ),
        (np.full((1, 6), np.inf), ValueError, "x must be finite"),
        ([["a"] * 6], TypeError, r"x must be a float array of shape \(n, 6\)"),
    ],
)
def test_bad_points_raise(x, err, msg):
    ds = toydata.get("mix6")
    with pytest.raises(err, match=msg):
        ds.log_prob(x)
    with pytest.raises(err, match=msg):
        ds.unmix(x)


def test_bad_names_and_sampling_arguments_raise():
    with pytest.raises(ValueError, match=r"unknown dataset name 'mix5'.*mix16, mix4, mix6, mix8"):
        toydata.get("mix5")
    with pytest.raises(TypeError, match="dataset name must be a str"):
        toydata.get(6)
    ds = toydata.get("mix8")
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        ds.sample(0)
    with pytest.raises(TypeError, match="n must be a positive int"):
        ds.sample(2.0)
    with pytest.raises(ValueError, match="seed must be None or a non-negative int, got -1"):
        ds.sample(3, seed=-1)
    with pytest.raises(TypeError, match="seed must be None"):
        ds.sample(3, seed="1")


def test_bad_constructor_arguments_raise():
    moons = toydata.get("two_moons")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        MixedBlocks("", [moons, moons], 0)
    with pytest.raises(TypeError, match="blocks must be a sequence of ToyDataset"):
        MixedBlocks("m", "two_moons", 0)
    with pytest.raises(ValueError, match="blocks must hold at least one ToyDataset"):
        MixedBlocks("m", [], 0)
    with pytest.raises(TypeError, match=r"blocks\[1\] must be a ToyDataset, got 'rings'"):
        MixedBlocks("m", [moons, "rings"], 0)
    with pytest.raises(ValueError, match="mixing_seed must be a non-negative int, got -1"):
        MixedBlocks("m", [moons, moons], -1)
    with pytest.raises(TypeError, match="mixing_seed must be a non-negative int"):
        MixedBlocks("m", [moons, moons], 1.5)
    with pytest.raises(TypeError, match="description must be a str or None"):
        MixedBlocks("m", [moons, moons], 0, description=3)
