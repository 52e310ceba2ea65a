"""Bundle adjustment (ADBench's BA, GradBench's ``ba``): reprojection residuals and their
sparse Jacobian.

The residuals of observation j depend only on its camera, its point and its weight: 15
numbers. So the Jacobian, of 3p rows and 11n + 3m + p columns, has 31 non-zeros in each
observation's three rows, and every engine computes it from *blocks*, without a dense
matrix. The cameras and points are gathered per observation first (``gathered``); in the
gathered variables the Jacobian is block-diagonal, and a derivative seeded in all
observations at once yields every block's row or column together (the compressed
Jacobian of Curtis, Powell and Reid: observations are the colour classes):

* forward mode (``torch-fwd``, ``jax-fwd``), ``fd`` and ``complex-step``: 15 columns, the
  Jacobian of the residuals with every observation's variables moved by one shared
  15-vector (one JVP, or one difference, per block column, for all observations at once);
* reverse mode (``torch``, ``torch-func``, ``torch-compile``, ``jax``): one VJP's forward
  pass and 3 pullbacks, one per block row (the two reprojection coordinates, the weight
  term), each seeded with ones in every observation;
* ``numpy``: the blocks derived by hand (``hand_blocks``), as ADBench's ``manual`` tool.

The blocks are then laid out as GradBench's eval expects, in compressed sparse rows
(``sparse``): each observation's two reprojection rows hold its 11 camera, 3 point and 1
weight derivatives, then p rows of one weight derivative each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._boundary import on_engine
from gradlab._checks import check_int, check_mapping
from gradlab._errors import ArgumentError
from gradlab.engines._protocol import GradientEngine, jacobian_of, to_numpy_all_of, vjp_of
from gradlab.problems._base import AbstractProblem, Array, Data, Params

#: A camera: Rodrigues rotation (3), centre (3), focal length, principal point (2), radial
#: distortion (2); ADBench's order.
CAMERA = 11
#: One observation's variables: its camera, its point (3) and its weight.
BLOCK = CAMERA + 3 + 1


def _cross(a: list[Array], b: list[Array]) -> list[Array]:
    """a × b, each a list of 3 components (arrays over the observations)."""
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def residuals(
    cam: Array, point: Array, w: Array, feats: Array, xp: Any, rotating: Array | None = None
) -> dict[str, Array]:
    """Each observation's reprojection error and weight error, as ADBench computes them.

    The variables come a row per component (structure of arrays): every operation is then
    one pass over contiguous observations, where a row per observation would slice every
    component out with a stride.

    Args:
        cam: Each observation's camera, (11, p).
        point: Each observation's point, (3, p).
        w: Each observation's weight, (p,).
        feats: Each observation's measured feature, (2, p).
        xp: The array namespace.
        rotating: Which cameras take Rodrigues' branch (a non-zero rotation), if known
            from the values apart from any perturbation (complex step compares no
            complex numbers); by default, decided here.

    Returns:
        ``{"reproj_err": (p, 2), "w_err": (p,)}``: w·(projection − feature) and 1 − w².
    """
    rot = [cam[0], cam[1], cam[2]]
    y = [point[i] - cam[3 + i] for i in range(3)]
    sqtheta = rot[0] * rot[0] + rot[1] * rot[1] + rot[2] * rot[2]
    # ADBench's branch: Rodrigues' formula, or its first order at a zero rotation. The
    # other branch's angle is set to 1 there, so that neither side divides by zero.
    if rotating is None:
        rotating = sqtheta != 0
    theta = xp.sqrt(xp.where(rotating, sqtheta, xp.ones_like(sqtheta)))
    axis = [r / theta for r in rot]
    cos, sin = xp.cos(theta), xp.sin(theta)
    along = (axis[0] * y[0] + axis[1] * y[1] + axis[2] * y[2]) * (1 - cos)
    turned, small = _cross(axis, y), _cross(rot, y)
    xcam = [
        xp.where(rotating, y[i] * cos + turned[i] * sin + axis[i] * along, y[i] + small[i])
        for i in range(3)
    ]
    u, v = xcam[0] / xcam[2], xcam[1] / xcam[2]
    rsq = u * u + v * v
    scale = (1 + cam[9] * rsq + cam[10] * rsq * rsq) * cam[6]
    error = [w * (u * scale + cam[7] - feats[0]), w * (v * scale + cam[8] - feats[1])]
    return {"reproj_err": xp.stack(error, axis=1), "w_err": 1 - w * w}


#: Observations per chunk of the hand derivation: each of its few hundred operations then
#: works on arrays that stay in cache (a few KB each), where whole-length arrays (tens of
#: MB at GradBench's sizes) would stream through memory once per operation.
_CHUNK = 8192

Matrix = list[list[Any]]  # rows of components, each an array over observations


def _product(a: Matrix, b: Matrix) -> Matrix:
    """a·b for small matrices of arrays."""
    inner = range(len(b))
    return [[sum(row[k] * b[k][j] for k in inner) for j in range(len(b[0]))] for row in a]


def _hand_chunk(cam: np.ndarray, point: np.ndarray, w: np.ndarray, feats: np.ndarray) -> Any:
    """The residuals' blocks for one chunk: (2, 15) rows of arrays, and ∂w_err/∂w."""
    rot = [cam[0], cam[1], cam[2]]
    y = [point[i] - cam[3 + i] for i in range(3)]
    sqtheta = rot[0] * rot[0] + rot[1] * rot[1] + rot[2] * rot[2]
    rotating = sqtheta != 0
    theta = np.sqrt(np.where(rotating, sqtheta, 1.0))
    a = [r / theta for r in rot]
    cos, sin = np.cos(theta), np.sin(theta)
    dot = a[0] * y[0] + a[1] * y[1] + a[2] * y[2]
    versine = 1 - cos
    zero = np.zeros_like(theta)
    skew_a = [[zero, -a[2], a[1]], [a[2], zero, -a[0]], [-a[1], a[0], zero]]
    skew_y = [[zero, -y[2], y[1]], [y[2], zero, -y[0]], [-y[1], y[0], zero]]
    skew_r = [[zero, -rot[2], rot[1]], [rot[2], zero, -rot[0]], [-rot[1], rot[0], zero]]
    # Xcam = R·y, R = cos·I + sin·[a]ₓ + (1 − cos)·a·aᵀ (a = rot/θ); at θ = 0, I + [rot]ₓ.
    turn = [
        [
            np.where(
                rotating,
                (cos if i == j else 0) + sin * skew_a[i][j] + versine * a[i] * a[j],
                (1.0 if i == j else 0) + skew_r[i][j],
            )
            for j in range(3)
        ]
        for i in range(3)
    ]
    xcam = [turn[i][0] * y[0] + turn[i][1] * y[1] + turn[i][2] * y[2] for i in range(3)]
    # ∂Xcam/∂rot: through θ (∂θ/∂rot = aᵀ) and through a (∂a/∂rot = (I − a·aᵀ)/θ).
    crossed = _cross(a, y)
    through_theta = [-sin * y[i] + cos * crossed[i] + sin * dot * a[i] for i in range(3)]
    through_axis = [
        [-sin * skew_y[i][j] + versine * ((dot if i == j else 0) + a[i] * y[j]) for j in range(3)]
        for i in range(3)
    ]
    projector = [
        [((1.0 if i == j else 0) - a[i] * a[j]) / theta for j in range(3)] for i in range(3)
    ]
    chained = _product(through_axis, projector)
    d_rot = [
        [
            np.where(rotating, through_theta[i] * a[j] + chained[i][j], -skew_y[i][j])
            for j in range(3)
        ]
        for i in range(3)
    ]
    z = xcam[2]
    p = [xcam[0] / z, xcam[1] / z]
    d_p = [[1 / z, zero, -p[0] / z], [zero, 1 / z, -p[1] / z]]  # ∂(x/z, y/z)/∂Xcam
    k1, k2, focal = cam[9], cam[10], cam[6]
    rsq = p[0] * p[0] + p[1] * p[1]
    scale = 1 + k1 * rsq + k2 * rsq * rsq
    bend = 2 * (k1 + 2 * k2 * rsq)
    d_distort = [
        [(scale if i == j else 0) + bend * p[i] * p[j] for j in range(2)] for i in range(2)
    ]
    wf = w * focal
    d_xcam = [[wf * entry for entry in row] for row in _product(d_distort, d_p)]
    d_y = _product(d_xcam, turn)
    d_rotation = _product(d_xcam, d_rot)
    rows = []
    for i in range(2):
        residual = p[i] * scale * focal + cam[7 + i] - feats[i]
        rows.append(
            [
                *d_rotation[i],
                *(-entry for entry in d_y[i]),
                w * p[i] * scale,
                w if i == 0 else zero,
                zero if i == 0 else w,
                wf * rsq * p[i],
                wf * rsq * rsq * p[i],
                *d_y[i],
                residual,
            ]
        )
    return rows, -2 * w


def hand_blocks(
    cam: np.ndarray, point: np.ndarray, w: np.ndarray, feats: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each observation's Jacobian block, derived by hand (ADBench's ``manual`` derives
    the same per observation): chunk by chunk, a row of arrays per component.

    Args:
        cam, point, w, feats: As for ``residuals``: (11, p), (3, p), (p,), (2, p).

    Returns:
        ``(reproj (p, 2, 15), w_err (p,))``: ∂reproj_err/∂(camera, point, weight) and
        ∂w_err/∂w = −2w.
    """
    p = w.shape[0]
    block = np.empty((p, 2, BLOCK))
    w_block = np.empty(p)
    for begin in range(0, p, _CHUNK):
        part = slice(begin, begin + _CHUNK)
        rows, w_block[part] = _hand_chunk(cam[:, part], point[:, part], w[part], feats[:, part])
        for i, row in enumerate(rows):
            for j, entry in enumerate(row):
                block[part, i, j] = entry
    return block, w_block


@dataclass(frozen=True)
class BundleAdjustment(AbstractProblem):
    r"""ADBench's bundle adjustment (GradBench's ``ba``): n cameras, m points and p
    observations; each observation's reprojection error and a weight term.

    Parameters: ``cams`` (n, 11): Rodrigues rotation, centre, focal length, principal point,
    two radial distortion coefficients; ``x`` (m, 3), the points; ``w`` (p,), one weight per
    observation. Data: ``obs`` (p, 2), each observation's camera and point (integers, held
    as floats), and ``feats`` (p, 2), the measured features.

    The loss is vector-valued: ``{"reproj_err": (p, 2), "w_err": (p,)}``, with
    reproj_err = w·(π(camera, point) − feature) (rotation, perspective division, radial
    distortion ``1 + k₁r² + k₂r⁴``, focal length and principal point) and w_err = 1 − w².
    [`gradlab.jacobian`][gradlab.jacobian] gives it densely (small sizes); GradBench's
    sparse Jacobian is ``sparse_jacobian`` in ``gradlab.gradbench._ba`` (the module's
    docstring says how each engine computes it).

    Args:
        n: Cameras, m: points, p: observations (integers ≥ 1).

    Examples:
        >>> import numpy as np, gradlab
        >>> problem = gradlab.BundleAdjustment(n=2, m=3, p=4)
        >>> data = problem.make_data()
        >>> params = problem.initial_params(data)
        >>> out = problem.loss(params, data, np)
        >>> out["reproj_err"].shape, out["w_err"].shape
        ((4, 2), (4,))
    """

    n: int = 1
    m: int = 1
    p: int = 1
    name = "ba"

    def __post_init__(self) -> None:
        for field in ("n", "m", "p"):
            object.__setattr__(self, field, check_int(getattr(self, field), field, 1))

    def loss(self, params: Params, data: Data, xp: Any) -> dict[str, Array]:
        """The residuals of every observation."""
        obs = xp.astype(data["obs"], xp.int64)
        cam, point = params["cams"][obs[:, 0]], params["x"][obs[:, 1]]
        return residuals(cam.T, point.T, params["w"], data["feats"].T, xp)

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """n cameras, m points, p weights."""
        return {"cams": (self.n, CAMERA), "x": (self.m, 3), "w": (self.p,)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """``obs``: p pairs of integers, a camera below n and a point below m; ``feats``:
        p pairs of numbers."""
        mapping = check_mapping(data, "data")
        if set(mapping) != {"obs", "feats"}:
            raise ArgumentError(
                "data", f"must have exactly the keys 'obs' and 'feats', got {sorted(mapping)}"
            )
        checked = {}
        for key in ("obs", "feats"):
            array = np.asarray(mapping[key], dtype=np.float64)
            if array.shape != (self.p, 2):
                raise ArgumentError(
                    f"data[{key!r}]", f"has shape {array.shape}, expected ({self.p}, 2)"
                )
            if not np.all(np.isfinite(array)):
                raise ArgumentError(f"data[{key!r}]", "has a value that is not a finite number")
            checked[key] = array
        obs = checked["obs"]
        if np.any(obs != np.round(obs)) or np.any(obs < 0) or np.any(obs >= (self.n, self.m)):
            raise ArgumentError(
                "data['obs']",
                f"must hold integers: a camera in [0, {self.n}) and a point in [0, {self.m})",
            )
        return checked

    def make_data(self, n: int = 0, *, seed: int = 0) -> dict[str, np.ndarray]:
        """GradBench's observations: the i-th sees camera i mod n and point i mod m, and
        the feature of ADBench's first file (``ba1``), repeated."""
        del n, seed  # the layout is GradBench's, fixed by (n, m, p)
        index = np.arange(self.p)
        return {
            "obs": np.stack([index % self.n, index % self.m], axis=1).astype(np.float64),
            "feats": np.tile(_BA1["feat"], (self.p, 1)),
        }

    def initial_params(self, data: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, Any]:
        """ADBench's first camera, point and weight (``ba1``), repeated, as GradBench does."""
        return {
            "cams": np.tile(_BA1["cam"], (self.n, 1)),
            "x": np.tile(_BA1["x"], (self.m, 1)),
            "w": np.full(self.p, _BA1["w"]),
        }


#: The camera, point, weight and feature of ADBench's ``ba1_n49_m7776_p31843.txt``, which
#: GradBench repeats to make every input.
_BA1: dict[str, Any] = {
    "cam": [
        -0.758453,
        -1.109613,
        -0.845551,
        34.556073,
        39.676747,
        53.881673,
        419.194514,
        5.864426,
        -8.518870,
        0.087812,
        0.002739,
    ],
    "x": [7.203245, 0.001144, 3.023326],
    "w": 0.417022,
    "feat": [271.760969, 834.209256],
}


class _Observations(AbstractProblem):
    """The residuals as a function of the gathered variables, a row per component: ``cam``
    (11, p), ``x`` (3, p), ``w`` (p,); block-diagonal Jacobian. Data: ``feats`` (2, p)."""

    name = "ba-observations"

    def loss(self, params: Params, data: Data, xp: Any) -> dict[str, Array]:
        return residuals(params["cam"], params["x"], params["w"], data["feats"], xp)

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        p = np.shape(data["feats"])[1]
        return {"cam": (CAMERA, p), "x": (3, p), "w": (p,)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        return dict(check_mapping(data, "data"))


class _Shifted(AbstractProblem):
    """The residuals with every observation's variables shifted by one ``shift`` (15,):
    at ``shift = 0`` its Jacobian holds every observation's block. Data: ``cam``, ``x``,
    ``w`` (gathered) and ``feats``."""

    name = "ba-shifted"

    def loss(self, params: Params, data: Data, xp: Any) -> dict[str, Array]:
        shift, cam = params["shift"], data["cam"]
        # The branch is taken at the unshifted point, as the derivative is.
        rotating = cam[0] * cam[0] + cam[1] * cam[1] + cam[2] * cam[2] != 0
        return residuals(
            cam + shift[:CAMERA, None],
            data["x"] + shift[CAMERA : CAMERA + 3, None],
            data["w"] + shift[CAMERA + 3],
            data["feats"],
            xp,
            rotating,
        )

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        return {"shift": (BLOCK,)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        return dict(check_mapping(data, "data"))


#: Engines whose derivatives are columns (JVPs): forward mode and the difference methods.
_BY_COLUMNS = {"fd", "complex-step"}


def by_columns(engine: GradientEngine) -> bool:
    """Whether ``engine`` computes Jacobians a column (a JVP) at a time: forward mode and
    finite differences; otherwise a row (a VJP) at a time, reverse mode."""
    return engine.name in _BY_COLUMNS or getattr(engine, "mode", "reverse") == "forward"


def block_jacobian(
    engine: GradientEngine, problem: BundleAdjustment, params: Params, data: Data
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """A function computing every observation's Jacobian block on ``engine``.

    Everything that does not depend on the parameters' values (the seeds, moving the
    gathered arrays to the engine) is done here, once; the function returned does the
    differentiation, waits for it and returns NumPy arrays.

    Args:
        engine: The engine.
        problem: The problem (its sizes).
        params: Checked NumPy parameters.
        data: Checked NumPy data.

    Returns:
        A function of no arguments returning ``(reproj (p, 2, 15), w_err (p,))``.

    Raises:
        NotSupported: the engine has neither JVPs nor VJPs (``numpy``'s blocks are
            derived by hand).
    """
    obs = data["obs"].astype(np.intp)
    # A row per component, each contiguous over the observations (see ``residuals``).
    gathered = {
        "cam": params["cams"].T[:, obs[:, 0]],
        "x": params["x"].T[:, obs[:, 1]],
        "w": params["w"],
    }
    feats = np.ascontiguousarray(data["feats"].T)
    if engine.name == "numpy":

        def by_hand() -> tuple[np.ndarray, np.ndarray]:
            return hand_blocks(gathered["cam"], gathered["x"], gathered["w"], feats)

        return by_hand
    p, to_numpy = problem.p, to_numpy_all_of(engine)
    if by_columns(engine):
        # The same derivative of every observation at once: each observation's variables
        # shifted by one 15-vector, whose Jacobian (p × 3 × 15) is every block's columns.
        jacobian = jacobian_of(engine, _Shifted())
        shifted_data = on_engine(engine, {**gathered, "feats": feats}, "float64")
        shift = on_engine(engine, {"shift": np.zeros(BLOCK)}, "float64")

        def by_columns_() -> tuple[np.ndarray, np.ndarray]:
            found = jacobian(shift, shifted_data)[1]
            reproj, weight = to_numpy([found["reproj_err"]["shift"], found["w_err"]["shift"]])
            return reproj, weight[:, -1]

        return by_columns_
    pull = vjp_of(engine, _Observations())
    moved = on_engine(engine, gathered, "float64")
    moved_data = on_engine(engine, {"feats": feats}, "float64")
    zeros2, zeros1 = np.zeros((p, 2)), np.zeros(p)
    seeds = []
    for row in range(2):
        seed = zeros2.copy()
        seed[:, row] = 1.0
        seeds.append(on_engine(engine, {"reproj_err": seed, "w_err": zeros1}, "float64"))
    seeds.append(on_engine(engine, {"reproj_err": zeros2, "w_err": np.ones(p)}, "float64"))

    def by_vjps() -> tuple[np.ndarray, np.ndarray]:
        _, pullback = pull(moved, moved_data)
        rows = [pullback(seed) for seed in seeds]
        arrays = to_numpy([row[name] for row in rows for name in ("cam", "x", "w")])
        block = np.empty((p, 2, BLOCK))
        for r in range(2):
            cam, point, weight = arrays[3 * r : 3 * r + 3]
            block[:, r, :CAMERA], block[:, r, CAMERA:-1] = cam.T, point.T
            block[:, r, -1] = weight
        return block, arrays[-1]

    return by_vjps


@dataclass(frozen=True)
class Sparse:
    """A Jacobian in compressed sparse rows: ``rows`` (the start of each row in ``cols``
    and ``vals``, then their length), ``cols`` and ``vals``."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    shape: tuple[int, int]

    def dense(self) -> np.ndarray:
        """The matrix, dense (small sizes: tests)."""
        matrix = np.zeros(self.shape)
        lengths = np.diff(self.rows)
        matrix[np.repeat(np.arange(self.shape[0]), lengths), self.cols] = self.vals
        return matrix


def sparse(
    problem: BundleAdjustment, obs: np.ndarray, block: np.ndarray, w_block: np.ndarray
) -> Sparse:
    """The blocks laid out as ADBench's ``BASparseMat``: rows 2j and 2j + 1 hold
    observation j's camera (11), point (3) and weight (1) derivatives; row 2p + j its weight
    term's derivative."""
    n, m, p = problem.n, problem.m, problem.p
    # 32-bit indices, as ADBench's (C++ int): the bounds keep 31p and the columns below 2³¹.
    index = obs.astype(np.int32)
    rows = np.empty(3 * p + 1, dtype=np.int32)
    rows[: 2 * p + 1] = np.arange(0, BLOCK * (2 * p + 1), BLOCK, dtype=np.int32)
    rows[2 * p + 1 :] = np.arange(2 * p * BLOCK + 1, 2 * p * BLOCK + p + 1, dtype=np.int32)
    cols = np.empty(31 * p, dtype=np.int32)
    reproj = cols[: 30 * p].reshape(p, 2, BLOCK)
    reproj[:, :, :CAMERA] = (CAMERA * index[:, 0:1] + np.arange(CAMERA, dtype=np.int32))[:, None]
    reproj[:, :, CAMERA:-1] = (CAMERA * n + 3 * index[:, 1:2] + np.arange(3, dtype=np.int32))[
        :, None
    ]
    cols[30 * p :] = CAMERA * n + 3 * m + np.arange(p, dtype=np.int32)
    reproj[:, :, -1] = cols[30 * p :, None]
    vals = np.empty(31 * p)
    vals[: 30 * p].reshape(p, 2, BLOCK)[...] = block
    vals[30 * p :] = w_block
    return Sparse(rows, cols, vals, (3 * p, CAMERA * n + 3 * m + p))
