"""Hand tracking (ADBench's Hand, GradBench's ``ht``): a skinned hand model posed by 26
angles, fitted to points.

The residuals are each point less the hand's surface at its correspondence: a vertex
(``simple``), or a point of a triangle at barycentric coordinates ``us`` (``complicated``).
The Jacobian is tall (3 rows per point, 26 pose columns, and in the complicated case two
more per point, each point's own ``us``), so every engine takes it by columns: 26 JVPs in
the angles, and 2 for all the points' ``us`` at once, their rows being independent (the
compressed Jacobian: the two columns GradBench asks for, ∂r/∂u₀ and ∂r/∂u₁ of each point's
own coordinates). Forward-mode engines and finite differences build it as their Jacobian;
reverse-mode engines with their framework's JVP (``torch.func.jvp``, ``jax.jvp``): a
reverse pass per row would be 3 per point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from gradlab._boundary import on_engine
from gradlab._checks import check_int, check_mapping
from gradlab._errors import ArgumentError
from gradlab.engines._protocol import GradientEngine, jacobian_of, jvp_of, to_numpy_all_of
from gradlab.gradbench._ba import by_columns
from gradlab.problems._base import AbstractProblem, Array, Data, Params

#: The pose angles: global rotation (3), translation (3), then 4 per finger (5 fingers).
THETA = 26
#: The bones the pose's angles reach: the root and wrist, then 4 per finger.
BONES = 22
_FINGERS = 5
#: ADBench's hand: a root, and five chains of four bones from it (the wrist and fingers).
HAND_PARENTS = (-1, *(0 if (bone - 1) % 4 == 0 else bone - 1 for bone in range(1, BONES)))


def _pose_table(bones: int) -> np.ndarray:
    """Where each of the pose's (bones + 3) × 3 entries comes from in θ (THETA: zero).

    ADBench's ``to_pose_params``: row 0 the global rotation, row 1 the scale (ones, not
    read here), row 2 the translation, rows 3 and 4 (root, wrist) zero, then per finger a
    first joint with two angles, two joints with one, and a tip with none.
    """
    table = np.full((bones + 3, 3), THETA, dtype=np.intp)
    table[0], table[2] = (0, 1, 2), (3, 4, 5)
    angle, row = 6, 5
    for _ in range(_FINGERS):
        for joint in range(3):
            table[row, 0] = angle
            angle += 1
            if joint == 0:
                table[row, 1] = angle
                angle += 1
            row += 1
        row += 1
    return table


def _euler(angles: Array, xp: Any) -> Array:
    """Rz·Ry·Rx for each row (x, z, y) of ``angles`` (bones, 3), as ADBench orders them."""
    cx, sx = xp.cos(angles[:, 0]), xp.sin(angles[:, 0])
    cz, sz = xp.cos(angles[:, 1]), xp.sin(angles[:, 1])
    cy, sy = xp.cos(angles[:, 2]), xp.sin(angles[:, 2])
    rows = [
        [cz * cy, -sz * cx + cz * sy * sx, sz * sx + cz * sy * cx],
        [sz * cy, cz * cx + sz * sy * sx, -cz * sx + sz * sy * cx],
        [-sy, cy * sx, cy * cx],
    ]
    return xp.stack([xp.stack(row, axis=1) for row in rows], axis=1)


def _angle_axis(rotation: Array, xp: Any) -> Array:
    """Rodrigues' rotation matrix of an angle-axis 3-vector; the identity below an angle
    of 10⁻⁴, as ADBench (the angle is set to 1 there so neither branch divides by zero)."""
    norm = xp.sqrt(xp.sum(rotation * rotation))
    small = norm < 1e-4
    safe = xp.where(small, xp.ones_like(norm), norm)
    x, y, z = rotation[0] / safe, rotation[1] / safe, rotation[2] / safe
    s, c = xp.sin(safe), xp.cos(safe)
    matrix = xp.stack(
        [
            xp.stack([x * x + (1 - x * x) * c, x * y * (1 - c) - z * s, x * z * (1 - c) + y * s]),
            xp.stack([x * y * (1 - c) + z * s, y * y + (1 - y * y) * c, y * z * (1 - c) - x * s]),
            xp.stack([x * z * (1 - c) - y * s, z * y * (1 - c) + x * s, z * z + (1 - z * z) * c]),
        ]
    )
    eye = xp.asarray(np.eye(3), dtype=matrix.dtype)
    return xp.where(small, eye, matrix)


@dataclass(frozen=True)
class HandTracking(AbstractProblem):
    r"""ADBench's hand tracking (GradBench's ``ht``): a linear-blend-skinned hand posed by
    26 angles, and each point's distance to it.

    Parameters: ``theta`` (26,): global rotation (angle-axis), translation, then each
    finger's joint angles; in the complicated case also ``us`` (points, 2), each point's
    barycentric coordinates in its triangle. Data: the model, ``base_relatives`` and
    ``inverse_base_absolutes`` (bones, 4, 4), ``base_positions`` (vertices, 4, homogeneous),
    ``weights`` (vertices, bones), ``triangles`` (triangles, 3; complicated only), and the
    observations, ``points`` (points, 3) and ``correspondences`` (points,): a vertex, or a
    triangle in the complicated case. Indices are integers held as floats.

    The loss is vector-valued, the residuals (points, 3): each point less the posed hand's
    vertex, or its point at ``us`` in the triangle.

    Args:
        parents: Each bone's parent (−1 for a root), earlier in the order; by default
            ADBench's hand (``HAND_PARENTS``), whose structure its hand-derived Jacobian
            assumes.
        points: The number of points.
        complicated: Whether points correspond to triangles (with ``us``) or vertices.
        mirrored: Whether the model is mirrored (its x negated).

    Examples:
        >>> import numpy as np, gradlab
        >>> problem = gradlab.HandTracking(points=5, complicated=True)
        >>> data = problem.make_data(8)
        >>> residuals = problem.loss(problem.initial_params(data), data, np)
        >>> residuals.shape
        (5, 3)
    """

    parents: tuple[int, ...] = ()
    points: int = 1
    complicated: bool = False
    mirrored: bool = False
    name = "ht"

    def __post_init__(self) -> None:
        if self.parents == ():
            object.__setattr__(self, "parents", HAND_PARENTS)
        if not isinstance(self.parents, tuple) or not all(
            isinstance(parent, int) and not isinstance(parent, bool) for parent in self.parents
        ):
            raise ArgumentError("parents", f"must be a tuple of integers, got {self.parents!r}")
        if len(self.parents) < BONES:
            raise ArgumentError(
                "parents",
                f"has {len(self.parents)} bones; the pose's 26 angles reach {BONES}",
            )
        for bone, parent in enumerate(self.parents):
            if not -1 <= parent < bone:
                raise ArgumentError(
                    "parents", f"bone {bone}'s parent is {parent}: it must be −1 or an earlier bone"
                )
        object.__setattr__(self, "points", check_int(self.points, "points", 1))
        for flag in ("complicated", "mirrored"):
            if not isinstance(getattr(self, flag), bool):
                raise ArgumentError(flag, f"must be True or False, got {getattr(self, flag)!r}")

    @cached_property
    def _table(self) -> list[int]:
        table: list[int] = _pose_table(len(self.parents)).reshape(-1).tolist()
        return table

    def vertices(self, theta: Array, data: Data, xp: Any) -> Array:
        """The posed hand's vertices, (3, vertices)."""
        bones = len(self.parents)
        padded = xp.concat([theta, xp.zeros_like(theta[:1])])
        pose = xp.reshape(padded[xp.asarray(self._table)], (bones + 3, 3))
        turns = _euler(pose[3:], xp)
        base = data["base_relatives"]
        relatives = xp.concat([base[:, :, :3] @ turns, base[:, :, 3:]], axis=2)
        absolutes: list[Array] = []
        for bone, parent in enumerate(self.parents):
            absolutes.append(
                relatives[bone] if parent == -1 else absolutes[parent] @ relatives[bone]
            )
        transforms = xp.stack(absolutes) @ data["inverse_base_absolutes"]
        # Σ_bones weight·(transform·base position): the 3 × 4 transforms blended per vertex
        # by one product, then applied to each vertex's base position.
        blended = xp.reshape(transforms[:, :3, :], (bones, 12)).T @ data["weights"].T
        positions = data["base_positions"].T
        vertices = xp.sum(xp.reshape(blended, (3, 4, -1)) * positions[None, :, :], axis=1)
        if self.mirrored:
            vertices = vertices * xp.asarray(np.array([[-1.0], [1.0], [1.0]]), dtype=vertices.dtype)
        return _angle_axis(pose[0], xp) @ vertices + pose[2][:, None]

    def surface(self, theta: Array, us: Array | None, data: Data, xp: Any) -> Array:
        """The hand's point matched to each observed point, (points, 3)."""
        vertices = self.vertices(theta, data, xp)
        index = xp.astype(data["correspondences"], xp.int64)
        if not self.complicated:
            return vertices[:, index].T
        assert us is not None
        corners = xp.astype(data["triangles"], xp.int64)[index]
        first, second, third = (vertices[:, corners[:, k]].T for k in range(3))
        u, v = us[:, 0:1], us[:, 1:2]
        return u * first + v * second + (1 - u - v) * third

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """Each point less the hand's point matched to it."""
        return data["points"] - self.surface(params["theta"], params.get("us"), data, xp)

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        """θ, and each point's ``us`` in the complicated case."""
        shapes: dict[str, tuple[int, ...]] = {"theta": (THETA,)}
        if self.complicated:
            shapes["us"] = (self.points, 2)
        return shapes

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        """The model and the observations, with consistent shapes and indices in range."""
        mapping = check_mapping(data, "data")
        keys = {*_MODEL, "points", "correspondences", *(("triangles",) if self.complicated else ())}
        if set(mapping) != keys:
            raise ArgumentError(
                "data", f"must have exactly the keys {sorted(keys)}, got {sorted(mapping)}"
            )
        checked = {key: np.asarray(mapping[key], dtype=np.float64) for key in sorted(keys)}
        bones = len(self.parents)
        vertices = checked["base_positions"].shape[0] if checked["base_positions"].ndim else 0
        shapes: dict[str, tuple[int, ...]] = {
            "base_relatives": (bones, 4, 4),
            "inverse_base_absolutes": (bones, 4, 4),
            "base_positions": (vertices, 4),
            "weights": (vertices, bones),
            "points": (self.points, 3),
            "correspondences": (self.points,),
        }
        if self.complicated:
            shapes["triangles"] = (
                checked["triangles"].shape[0] if checked["triangles"].ndim else 0,
                3,
            )
        for key, shape in shapes.items():
            if checked[key].shape != shape or 0 in shape:
                raise ArgumentError(
                    f"data[{key!r}]", f"has shape {checked[key].shape}, expected {shape}"
                )
            if not np.all(np.isfinite(checked[key])):
                raise ArgumentError(f"data[{key!r}]", "has a value that is not a finite number")
        targets = {"correspondences": shapes["triangles"][0] if self.complicated else vertices}
        if self.complicated:
            targets["triangles"] = vertices
        for key, count in targets.items():
            index = checked[key]
            if np.any(index != np.round(index)) or np.any(index < 0) or np.any(index >= count):
                raise ArgumentError(f"data[{key!r}]", f"must hold integers in [0, {count})")
        return checked

    def make_data(
        self, n: int = 16, *, seed: int = 0, triangles: int | None = None
    ) -> dict[str, np.ndarray]:
        """A random hand of ``n`` vertices (at least 3): rigid bone transforms, weights
        summing to one per vertex, base absolutes consistent with the relatives, random
        correspondences and points; ``triangles`` (2n by default) in the complicated case."""
        n = check_int(n, "n", 3)
        rng = np.random.default_rng(seed)
        bones = len(self.parents)
        relatives = np.tile(np.eye(4), (bones, 1, 1))
        relatives[:, :3, :3] = _euler(rng.uniform(-0.5, 0.5, (bones, 3)), np)
        relatives[:, :3, 3] = rng.uniform(-0.3, 0.3, (bones, 3))
        absolutes: list[np.ndarray] = []
        for bone, parent in enumerate(self.parents):
            absolutes.append(
                relatives[bone] if parent == -1 else absolutes[parent] @ relatives[bone]
            )
        weights = rng.uniform(size=(n, bones)) ** 4
        data = {
            "base_relatives": relatives,
            "inverse_base_absolutes": np.linalg.inv(np.stack(absolutes)),
            "base_positions": np.concatenate([rng.normal(size=(n, 3)), np.ones((n, 1))], axis=1),
            "weights": weights / weights.sum(axis=1, keepdims=True),
            "points": rng.normal(size=(self.points, 3)),
        }
        if self.complicated:
            count = 2 * n if triangles is None else check_int(triangles, "triangles", 1)
            corners = np.stack([rng.permutation(n)[:3] for _ in range(count)])
            data["triangles"] = corners.astype(np.float64)
            data["correspondences"] = rng.integers(0, count, self.points).astype(np.float64)
        else:
            data["correspondences"] = rng.integers(0, n, self.points).astype(np.float64)
        return data

    def initial_params(self, data: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, Any]:
        """Small random angles (a rotation away from the identity's branch) and, in the
        complicated case, ``us`` inside each triangle."""
        rng = np.random.default_rng(seed)
        params = {"theta": rng.uniform(-0.3, 0.3, THETA)}
        if self.complicated:
            params["us"] = rng.uniform(0, 0.5, (self.points, 2))
        return params


#: The model's arrays in a problem's data.
_MODEL = ("base_relatives", "inverse_base_absolutes", "base_positions", "weights")


class _Compressed(AbstractProblem):
    """The residuals as a function of θ and one ``du`` (2,) added to every point's ``us``:
    its Jacobian in ``du`` holds each point's ∂r/∂u (complicated case only)."""

    name = "ht-compressed"

    def __init__(self, problem: HandTracking) -> None:
        self.problem = problem

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        us = data["us"] + params["du"][None, :]
        return data["points"] - self.problem.surface(params["theta"], us, data, xp)

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]]:
        return {"theta": (THETA,), "du": (2,)}

    def check_data(self, data: object) -> dict[str, np.ndarray]:
        return dict(check_mapping(data, "data"))


def _euler_derivatives(angles: np.ndarray) -> list[np.ndarray]:
    """∂(Rz·Ry·Rx)/∂ each of (x, z, y), for each row of ``angles``: three (bones, 3, 3)."""
    cx, sx = np.cos(angles[:, 0]), np.sin(angles[:, 0])
    cz, sz = np.cos(angles[:, 1]), np.sin(angles[:, 1])
    cy, sy = np.cos(angles[:, 2]), np.sin(angles[:, 2])
    zero, one = np.zeros_like(cx), np.ones_like(cx)

    def matrix(rows: list[list[np.ndarray]]) -> np.ndarray:
        return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)

    rx = matrix([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
    ry = matrix([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    rz = matrix([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
    drx = matrix([[zero, zero, zero], [zero, -sx, -cx], [zero, cx, -sx]])
    dry = matrix([[-sy, zero, cy], [zero, zero, zero], [-cy, zero, -sy]])
    drz = matrix([[-sz, -cz, zero], [cz, -sz, zero], [zero, zero, zero]])
    return [rz @ ry @ drx, drz @ ry @ rx, rz @ dry @ rx]


def _angle_axis_derivatives(rotation: np.ndarray, vertices: np.ndarray) -> list[np.ndarray]:
    """∂(R·vertices)/∂ each coordinate of the angle-axis ``rotation``: three (3, v).

    R = c·I + s·[a]ₓ + (1 − c)·a·aᵀ with θ = ‖r‖, a = r/θ; ∂θ/∂rₖ = aₖ and
    ∂a/∂rₖ = (eₖ − aₖ·a)/θ. Below θ = 10⁻⁴ R is the identity, and its derivative zero.
    """
    theta = float(np.sqrt(np.sum(rotation * rotation)))
    if theta < 1e-4:
        return [np.zeros_like(vertices) for _ in range(3)]
    a = rotation / theta
    s, c = np.sin(theta), np.cos(theta)

    def skew(v: np.ndarray) -> np.ndarray:
        return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])

    through_theta = -s * np.eye(3) + c * skew(a) + s * np.outer(a, a)
    out = []
    for k in range(3):
        da = (np.eye(3)[k] - a[k] * a) / theta
        derivative = (
            through_theta * a[k] + s * skew(da) + (1 - c) * (np.outer(da, a) + np.outer(a, da))
        )
        out.append(derivative @ vertices)
    return out


def hand_jacobian(problem: HandTracking, params: Params, data: Data) -> np.ndarray:
    """GradBench's Jacobian derived by hand (ADBench's ``manual`` has one too): the
    columns ∂/∂u₀, ∂/∂u₁ (complicated) then ∂/∂θ, one row per residual.

    An angle of bone b turns b and everything below it: with Aₓ the absolute transforms,
    ∂(transform of d)/∂angle = A_parent(b)·∂relative_b·A_b⁻¹·(transform of d) for every d
    under b, so each angle's derivative of the skinned vertices is one 4 × 4 matrix applied
    to Q_b, the vertices skinned by b's subtree alone.
    """
    theta = np.asarray(params["theta"], dtype=np.float64)
    parents, bones = problem.parents, len(problem.parents)
    table = np.asarray(problem._table).reshape(bones + 3, 3)
    pose = np.concatenate([theta, [0.0]])[table]
    angles = pose[3:]
    turns = _euler(angles, np)
    base = data["base_relatives"]
    relatives = base.copy()
    relatives[:, :, :3] = base[:, :, :3] @ turns
    absolutes = np.empty_like(relatives)
    for bone, parent in enumerate(parents):
        absolutes[bone] = relatives[bone] if parent == -1 else absolutes[parent] @ relatives[bone]
    transforms = absolutes @ data["inverse_base_absolutes"]
    # Each bone's own contribution to the skinned vertices, then summed over subtrees.
    positions = data["base_positions"].T  # (4, v)
    own = (transforms @ positions) * data["weights"].T[:, None, :]  # (bones, 4, v)
    subtree = own.copy()
    for bone in range(bones - 1, 0, -1):
        if parents[bone] != -1:
            subtree[parents[bone]] += subtree[bone]
    mirror = np.array([-1.0 if problem.mirrored else 1.0, 1.0, 1.0])[:, None]
    skinned = subtree[[b for b in range(bones) if parents[b] == -1]].sum(axis=0)[:3] * mirror
    rotation = _angle_axis(pose[0], np)
    vertices = rotation @ skinned + pose[2][:, None]
    # ∂vertices/∂θ, (26, 3, v).
    d_vertices = np.zeros((THETA, 3, skinned.shape[1]))
    for k, column in enumerate(_angle_axis_derivatives(pose[0], skinned)):
        d_vertices[k] = column
    d_vertices[3:6] = np.eye(3)[:, :, None]
    euler = _euler_derivatives(angles)
    for bone, parent in enumerate(parents):
        inverse = np.linalg.inv(absolutes[bone])
        above = np.eye(4) if parent == -1 else absolutes[parent]
        for slot in range(3):
            index = table[bone + 3, slot]
            if index == THETA:  # an angle the pose does not read
                continue
            d_relative = np.zeros((4, 4))
            d_relative[:, :3] = base[bone][:, :3] @ euler[slot][bone]
            chain = above @ d_relative @ inverse
            d_vertices[index] = rotation @ ((chain @ subtree[bone])[:3] * mirror)
    index = data["correspondences"].astype(np.intp)
    points = index.shape[0]
    if not problem.complicated:
        columns = -d_vertices[:, :, index]  # (26, 3, points)
        simple: np.ndarray = columns.transpose(2, 1, 0).reshape(3 * points, THETA)
        return simple
    us = params["us"]
    corners = data["triangles"].astype(np.intp)[index]  # (points, 3)
    weights = np.stack([us[:, 0], us[:, 1], 1 - us[:, 0] - us[:, 1]])  # (3, points)
    corner = [vertices[:, corners[:, k]] for k in range(3)]  # each (3, points)
    d_theta = -sum(weights[k] * d_vertices[:, :, corners[:, k]] for k in range(3))
    d_us = -np.stack([corner[0] - corner[2], corner[1] - corner[2]])  # (2, 3, points)
    full = np.concatenate([d_us, d_theta])
    complicated: np.ndarray = full.transpose(2, 1, 0).reshape(3 * points, 2 + THETA)
    return complicated


def jacobian(
    engine: GradientEngine, problem: HandTracking, params: Params, data: Data
) -> Callable[[], np.ndarray]:
    """A function computing GradBench's Jacobian on ``engine``: (3·points, 28), the columns
    ∂/∂u₀, ∂/∂u₁ of each point's own ``us`` then ∂/∂θ (complicated), or (3·points, 26).

    Moving the arrays and making the tangents happen here, once; the function returned
    differentiates, waits and returns NumPy.

    Raises:
        NotSupported: the engine has neither Jacobians nor JVPs.
    """
    if engine.name == "numpy":
        return lambda: hand_jacobian(problem, params, data)
    if problem.complicated:
        function: AbstractProblem = _Compressed(problem)
        at = {"theta": params["theta"], "du": np.zeros(2)}
        moved_data = on_engine(engine, {**data, "us": params["us"]}, "float64")
    else:
        function, at = problem, {"theta": params["theta"]}
        moved_data = on_engine(engine, data, "float64")
    moved = on_engine(engine, at, "float64")
    to_numpy = to_numpy_all_of(engine)
    names = list(at)[::-1]  # du first, as GradBench's columns

    if by_columns(engine):
        full = jacobian_of(engine, function)

        def columns() -> np.ndarray:
            found = full(moved, moved_data)[1]
            blocks = to_numpy([found[name] for name in names])
            return np.concatenate([np.reshape(b, (b.shape[0] * 3, -1)) for b in blocks], axis=1)

        return columns
    product = jvp_of(engine, function)
    tangents = []
    for name in names:
        for k in range(at[name].shape[0]):
            tangent = {key: np.zeros_like(value) for key, value in at.items()}
            tangent[name][k] = 1.0
            tangents.append(on_engine(engine, tangent, "float64"))

    def jvps() -> np.ndarray:
        found = to_numpy([product(moved, tangent, moved_data)[1] for tangent in tangents])
        return np.stack([np.reshape(column, -1) for column in found], axis=1)

    return jvps
