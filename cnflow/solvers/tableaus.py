"""Butcher tableaus of cnflow's explicit Runge–Kutta methods, as validated frozen data.

A method is nothing but a :class:`ButcherTableau`; the one stepping loop in
:mod:`cnflow.solvers.runge_kutta` runs all of them. Adding a method means adding one entry
to :data:`TABLEAUS`.

Coefficients are kept in float64 Python floats; the stepping code multiplies them into the
state, so they take the state's dtype and device without copies.

Dense output. Every method interpolates inside an accepted step as
``y(t0 + θh) = y0 + h Σ_i p_i(θ) k_i`` where the ``k_i`` are the *dense stages*: the
method's stages, then ``f(t1, y1)`` unless the method is FSAL (then it is the last stage),
then any extra stages the interpolant needs (DOP853 has three). ``interp[i][j]`` is the
coefficient of ``θ**(j + 1)`` in ``p_i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import polynomial as npoly

__all__ = ["ADAPTIVE_METHODS", "FIXED_STEP_METHODS", "METHODS", "TABLEAUS", "ButcherTableau",
           "get_tableau"]

_TOL = 1e-12


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    Attributes:
        name: registry name, e.g. ``"dopri5"``.
        order: order of the propagated solution ``y1 = y0 + h Σ b_i k_i``.
        c: stage times (fractions of the step).
        a: strictly lower-triangular stage matrix; row ``i`` has ``i`` entries.
        b: solution weights.
        b_error: weights of (solution − embedded solution); ``None`` for fixed-step methods.
        error_order: order of the embedded solution ``y0 + h Σ (b_i − b_error_i) k_i``.
        b_error_low: DOP853's second, third-order error estimate (combined with ``b_error``
            as in Hairer's code); ``None`` for the others.
        fsal: the last stage is ``f(t1, y1)`` and is reused as the next step's first stage.
        interp: dense-output polynomial coefficients, see the module docstring.
        interp_order: order of the dense output (``y(t)`` error is ``O(h**(interp_order+1))``
            per step).
        extra_c, extra_a: extra stages evaluated only when an output time falls in the step.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None
    error_order: int | None
    interp: tuple[tuple[float, ...], ...]
    interp_order: int
    fsal: bool = False
    b_error_low: tuple[float, ...] | None = None
    extra_c: tuple[float, ...] = field(default=())
    extra_a: tuple[tuple[float, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: `a` must be strictly lower triangular with {s} rows")
        for i, row in enumerate(self.a):
            if abs(math.fsum(row) - self.c[i]) > _TOL:
                raise ValueError(f"{self.name}: row {i} of `a` sums to {math.fsum(row)}, "
                                 f"not c[{i}] = {self.c[i]}")
        if len(self.b) != s or abs(math.fsum(self.b) - 1.0) > _TOL:
            raise ValueError(f"{self.name}: `b` must have {s} entries summing to 1")
        for weights in (self.b_error, self.b_error_low):
            if weights is not None and (len(weights) != s or abs(math.fsum(weights)) > _TOL):
                raise ValueError(f"{self.name}: error weights must have {s} entries summing to 0")
        if (self.b_error is None) != (self.error_order is None):
            raise ValueError(f"{self.name}: give both `b_error` and `error_order`, or neither")
        if self.fsal and (self.c[-1] != 1.0 or any(
                abs(x - y) > _TOL for x, y in zip(self.a[-1], self.b))):
            raise ValueError(f"{self.name}: an FSAL method's last stage must be f(t1, y1)")
        n_dense = s + (0 if self.fsal else 1) + len(self.extra_c)
        if len(self.interp) != n_dense:
            raise ValueError(f"{self.name}: `interp` needs {n_dense} rows, got {len(self.interp)}")
        # The interpolant must end where the step ends: p_i(1) = b_i.
        at_one = [math.fsum(row) for row in self.interp]
        expected = list(self.b) + [0.0] * (n_dense - s)
        if any(abs(x - y) > 1e-10 for x, y in zip(at_one, expected)):
            raise ValueError(f"{self.name}: the dense output does not reproduce y1 at θ = 1")
        for i, row in enumerate(self.extra_a):
            if len(row) != n_dense - len(self.extra_c) + i:
                raise ValueError(f"{self.name}: extra stage {i} has the wrong number of weights")
            if abs(math.fsum(row) - self.extra_c[i]) > _TOL:
                raise ValueError(f"{self.name}: extra stage {i} does not sum to its c")

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def controller_order(self) -> int:
        """``q`` in the step-size controller's ``r**(-1/q)``: how the error estimate scales.

        DOP853's combined estimate behaves like ``O(h**8)``, the others like the embedded
        method's local error, ``O(h**(error_order + 1))``.
        """
        if self.b_error_low is not None:
            return self.order
        return (self.error_order or 0) + 1

    @property
    def stages(self) -> int:
        return len(self.c)


def _lower(rows: list[list[float]]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in rows)


def _alternating_to_poly(parts: list[np.ndarray]) -> tuple[tuple[float, ...], ...]:
    """Coefficients of θ·(F0 + (1−θ)(F1 + θ(F2 + (1−θ)(F3 + …)))) per dense stage.

    This nested form is how Hairer's DOPRI5 and DOP853 codes write their dense output (and
    it contains the cubic Hermite interpolant as its first three terms); expanding it once
    here lets one polynomial evaluation serve every method.
    """
    n = len(parts[0])
    poly = [np.zeros(1) for _ in range(n)]
    for depth in range(len(parts) - 1, -1, -1):
        factor = np.array([0.0, 1.0]) if depth % 2 == 0 else np.array([1.0, -1.0])
        poly = [npoly.polymul(npoly.polyadd(p, [parts[depth][i]]), factor) for i, p in
                enumerate(poly)]
    degree = max(len(p) for p in poly) - 1
    rows = []
    for p in poly:
        p = np.pad(p, (0, degree + 1 - len(p)))
        rows.append(tuple(float(x) for x in p[1:]))  # the constant term is always zero
    return tuple(rows)


def _hermite(b: tuple[float, ...], fsal: bool) -> tuple[tuple[float, ...], ...]:
    """Cubic Hermite interpolant through (y0, f0) and (y1, f1), in dense-stage weights."""
    s = len(b)
    n = s + (0 if fsal else 1)
    bb = np.zeros(n)
    bb[:s] = b
    f0 = np.eye(n)[0]
    f1 = np.eye(n)[n - 1]
    return _alternating_to_poly([bb, f0 - bb, 2 * bb - f0 - f1])


# --- fixed-step methods -----------------------------------------------------------------

def _fixed(name: str, order: int, c, a, b) -> ButcherTableau:
    b = tuple(float(x) for x in b)
    return ButcherTableau(name=name, order=order, c=tuple(map(float, c)), a=_lower(a), b=b,
                          b_error=None, error_order=None, interp=_hermite(b, fsal=False),
                          interp_order=3)


EULER = _fixed("euler", 1, [0], [[]], [1])
MIDPOINT = _fixed("midpoint", 2, [0, 0.5], [[], [0.5]], [0, 1])
HEUN = _fixed("heun", 2, [0, 1], [[], [1]], [0.5, 0.5])
RK4 = _fixed("rk4", 4, [0, 0.5, 0.5, 1], [[], [0.5], [0, 0.5], [0, 0, 1]],
             [1 / 6, 1 / 3, 1 / 3, 1 / 6])

# --- Bogacki–Shampine 3(2), FSAL, Hermite dense output -----------------------------------

_BS_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_BS_B_EMB = (7 / 24, 1 / 4, 1 / 3, 1 / 8)
BOSH3 = ButcherTableau(
    name="bosh3", order=3,
    c=(0.0, 0.5, 0.75, 1.0),
    a=_lower([[], [0.5], [0.0, 0.75], list(_BS_B[:3])]),
    b=_BS_B,
    b_error=tuple(x - y for x, y in zip(_BS_B, _BS_B_EMB)), error_order=2,
    fsal=True, interp=_hermite(_BS_B, fsal=True), interp_order=3,
)

# --- Dormand–Prince 5(4), FSAL, Shampine's 4th-order dense output (Hairer's DOPRI5) -------

_DP5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP5_B_EMB = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP5_D = np.array([-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799,
                   -10690763975 / 1880347072, 701980252875 / 199316789632,
                   -1453857185 / 822651844, 69997945 / 29380423])
DOPRI5 = ButcherTableau(
    name="dopri5", order=5,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=_lower([
        [],
        [1 / 5],
        [3 / 40, 9 / 40],
        [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
        list(_DP5_B[:6]),
    ]),
    b=_DP5_B,
    b_error=tuple(x - y for x, y in zip(_DP5_B, _DP5_B_EMB)), error_order=4,
    fsal=True,
    interp=_alternating_to_poly([np.array(_DP5_B), np.eye(7)[0] - np.array(_DP5_B),
                                 2 * np.array(_DP5_B) - np.eye(7)[0] - np.eye(7)[6], _DP5_D]),
    interp_order=4,
)

# --- Tsitouras 5(4), FSAL, Tsitouras' 4th-order dense output -----------------------------
# Ch. Tsitouras, "Runge–Kutta pairs of order 5(4) satisfying only the first column
# simplifying assumption", Comput. Math. Appl. 62 (2011). Steps with the 5th-order weights.

_TS_A = [
    [],
    [0.161],
    [-0.008480655492356989, 0.335480655492357],
    [2.897153057105493, -6.359448489975075, 4.3622954328695815],
    [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
    [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.028269050394068383],
    [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774],
]
_TS_B = tuple(_TS_A[6]) + (0.0,)
_TS_B_ERROR = (-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
               -0.1447110071732629, 0.5823571654525552, -0.45808210592918697,
               0.015151515151515152)


def _product(scale: float, roots: list[float], quadratic: list[float] | None = None,
             theta_power: int = 2) -> tuple[float, ...]:
    """scale · θ^power · Π(θ − r) · (θ² + pθ + q), as coefficients of θ^1, θ^2, …"""
    poly = np.array([scale])
    for r in roots:
        poly = npoly.polymul(poly, [-r, 1.0])
    if quadratic is not None:
        poly = npoly.polymul(poly, [quadratic[1], quadratic[0], 1.0])
    poly = npoly.polymul(poly, np.eye(theta_power + 1)[theta_power])
    poly = np.pad(poly, (0, 6 - len(poly)))
    return tuple(float(x) for x in poly[1:5])


TSIT5 = ButcherTableau(
    name="tsit5", order=5,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=_lower(_TS_A),
    b=_TS_B,
    b_error=_TS_B_ERROR, error_order=4,
    fsal=True,
    interp=(
        _product(-1.0530884977290216, [1.3299890189751412],
                 [-1.4364028541716351, 0.7139816917074209], theta_power=1),
        _product(0.1017, [], [-2.1966568338249754, 1.2949852507374631]),
        _product(2.490627285651252793, [], [-2.38535645472061657, 1.57803468208092486]),
        _product(-16.54810288924490272, [1.21712927295533244, 0.61620406037800089]),
        _product(47.37952196281928122, [1.203071208372362603, 0.658047292653547382]),
        _product(-34.87065786149660974, [1.2, 2 / 3]),
        _product(2.5, [1.0, 0.6]),
    ),
    interp_order=4,
)

# --- Dormand–Prince 8(5,3) "DOP853", 7th-order dense output -----------------------------
# E. Hairer, S.P. Nørsett, G. Wanner, Solving Ordinary Differential Equations I, 2nd ed.,
# Springer (1993), and Hairer's code dop853.f. 12 stages plus f(t1, y1) (FSAL); the dense
# output needs three more stages.

_D8_C = (0.0, 0.05260015195876773, 0.0789002279381516, 0.1183503419072274,
         0.2816496580927726, 1 / 3, 0.25, 0.3076923076923077, 0.6512820512820513, 0.6,
         0.8571428571428571, 1.0, 1.0)
_D8_A_SPARSE = [
    {},
    {0: 0.05260015195876773},
    {0: 0.0197250569845379, 1: 0.0591751709536137},
    {0: 0.02958758547680685, 2: 0.08876275643042054},
    {0: 0.2413651341592667, 2: -0.8845494793282861, 3: 0.924834003261792},
    {0: 0.037037037037037035, 3: 0.17082860872947386, 4: 0.12546768756682242},
    {0: 0.037109375, 3: 0.17025221101954405, 4: 0.06021653898045596, 5: -0.017578125},
    {0: 0.03709200011850479, 3: 0.17038392571223998, 4: 0.10726203044637328,
     5: -0.015319437748624402, 6: 0.008273789163814023},
    {0: 0.6241109587160757, 3: -3.3608926294469414, 4: -0.868219346841726,
     5: 27.59209969944671, 6: 20.154067550477894, 7: -43.48988418106996},
    {0: 0.47766253643826434, 3: -2.4881146199716677, 4: -0.590290826836843,
     5: 21.230051448181193, 6: 15.279233632882423, 7: -33.28821096898486,
     8: -0.020331201708508627},
    {0: -0.9371424300859873, 3: 5.186372428844064, 4: 1.0914373489967295,
     5: -8.149787010746927, 6: -18.52006565999696, 7: 22.739487099350505,
     8: 2.4936055526796523, 9: -3.0467644718982196},
    {0: 2.273310147516538, 3: -10.53449546673725, 4: -2.0008720582248625,
     5: -17.9589318631188, 6: 27.94888452941996, 7: -2.8589982771350235,
     8: -8.87285693353063, 9: 12.360567175794303, 10: 0.6433927460157636},
    {0: 0.054293734116568765, 5: 4.450312892752409, 6: 1.8915178993145003,
     7: -5.801203960010585, 8: 0.3111643669578199, 9: -0.1521609496625161,
     10: 0.20136540080403034, 11: 0.04471061572777259},
]
_D8_EXTRA_C = (0.1, 0.2, 0.7777777777777778)
_D8_EXTRA_A_SPARSE = [
    {0: 0.056167502283047954, 6: 0.25350021021662483, 7: -0.2462390374708025,
     8: -0.12419142326381637, 9: 0.15329179827876568, 10: 0.00820105229563469,
     11: 0.007567897660545699, 12: -0.008298},
    {0: 0.03183464816350214, 5: 0.028300909672366776, 6: 0.053541988307438566,
     7: -0.05492374857139099, 10: -0.00010834732869724932, 11: 0.0003825710908356584,
     12: -0.00034046500868740456, 13: 0.1413124436746325},
    {0: -0.42889630158379194, 5: -4.697621415361164, 6: 7.683421196062599,
     7: 4.06898981839711, 8: 0.3567271874552811, 12: -0.0013990241651590145,
     13: 2.9475147891527724, 14: -9.15095847217987},
]
_D8_E5 = (0.01312004499419488, 0.0, 0.0, 0.0, 0.0, -1.2251564463762044, -0.4957589496572502,
          1.6643771824549864, -0.35032884874997366, 0.3341791187130175, 0.08192320648511571,
          -0.022355307863886294, 0.0)
_D8_E3 = (-0.18980075407240762, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003,
          -5.801203960010585, -0.4226823213237919, -0.1521609496625161, 0.20136540080403034,
          0.02265179219836082, 0.0)
_D8_D = np.array([
    [-8.428938276109013, 0, 0, 0, 0, 0.5667149535193777, -3.0689499459498917,
     2.38466765651207, 2.117034582445028, -0.871391583777973, 2.2404374302607883,
     0.6315787787694688, -0.08899033645133331, 18.148505520854727, -9.194632392478356,
     -4.436036387594894],
    [10.427508642579134, 0, 0, 0, 0, 242.28349177525817, 165.20045171727028,
     -374.5467547226902, -22.113666853125306, 7.733432668472264, -30.674084731089398,
     -9.332130526430229, 15.697238121770845, -31.139403219565178, -9.35292435884448,
     35.81684148639408],
    [19.985053242002433, 0, 0, 0, 0, -387.0373087493518, -189.17813819516758,
     527.8081592054236, -11.57390253995963, 6.8812326946963, -1.0006050966910838,
     0.7777137798053443, -2.778205752353508, -60.19669523126412, 84.32040550667716,
     11.99229113618279],
    [-25.69393346270375, 0, 0, 0, 0, -154.18974869023643, -231.5293791760455,
     357.6391179106141, 93.40532418362432, -37.45832313645163, 104.0996495089623,
     29.8402934266605, -43.53345659001114, 96.32455395918828, -39.17726167561544,
     -149.72683625798564],
])


def _dense(rows: list[dict[int, float]], width: int | None = None) -> list[list[float]]:
    return [[row.get(j, 0.0) for j in range(width if width is not None else i)]
            for i, row in enumerate(rows)]


def _dop853_interp() -> tuple[tuple[float, ...], ...]:
    n = 16
    b = np.zeros(n)
    b[:12] = [_D8_A_SPARSE[12].get(j, 0.0) for j in range(12)]
    f0, f1 = np.eye(n)[0], np.eye(n)[12]
    return _alternating_to_poly([b, f0 - b, 2 * b - f0 - f1, *_D8_D])


_D8_B = tuple(_dense([_D8_A_SPARSE[12]], 13)[0])
DOPRI8 = ButcherTableau(
    name="dopri8", order=8,
    c=_D8_C,
    a=_lower(_dense(_D8_A_SPARSE)),
    b=_D8_B,
    b_error=_D8_E5, error_order=5, b_error_low=_D8_E3,
    fsal=True,
    interp=_dop853_interp(), interp_order=7,
    extra_c=_D8_EXTRA_C,
    extra_a=_lower([[row.get(j, 0.0) for j in range(13 + i)]
                    for i, row in enumerate(_D8_EXTRA_A_SPARSE)]),
)

TABLEAUS: dict[str, ButcherTableau] = {
    tab.name: tab for tab in (EULER, MIDPOINT, HEUN, RK4, BOSH3, DOPRI5, TSIT5, DOPRI8)
}
METHODS: tuple[str, ...] = tuple(TABLEAUS)
ADAPTIVE_METHODS: tuple[str, ...] = tuple(name for name, t in TABLEAUS.items() if t.adaptive)
FIXED_STEP_METHODS: tuple[str, ...] = tuple(
    name for name, t in TABLEAUS.items() if not t.adaptive)


def get_tableau(method: str) -> ButcherTableau:
    """Look a method up by name; unknown names list the known ones."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}: {method!r}")
    try:
        return TABLEAUS[method]
    except KeyError:
        raise ValueError(f"method={method!r} is not known; choose one of "
                         f"{', '.join(METHODS)}") from None
