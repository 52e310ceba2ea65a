"""GradBench's two Jacobian evals, ``ba`` and ``ht``, against independent oracles.

Oracles: ADBench's C++ (``cpp/gradbench/evals/ba.hpp``, ``ht.hpp``) transcribed here
statement by statement, on scalars and small matrices, and differentiated by the complex
step (Im f(x + ih)/h, exact to round-off; its branches compare real parts, as the C++ does
on values). The engines' sparse and compressed Jacobians must match it entry by entry.
"""

from __future__ import annotations

import cmath
import json
from typing import Any

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab.gradbench import Tool
from gradlab.gradbench._ba import BundleAdjustment, block_jacobian, hand_blocks, sparse
from gradlab.gradbench._evals import EVALS
from gradlab.gradbench._ht import HAND_PARENTS, HandTracking, jacobian

STEP = 1e-30
BA_ENGINES = ["numpy", "torch", "jax", "torch-fwd", "jax-fwd", "fd", "complex-step", "tensorflow"]
HT_ENGINES = ["numpy", "torch", "jax", "torch-fwd", "jax-fwd", "fd", "tensorflow"]


# -- ADBench's BA, transcribed ---------------------------------------------------------------


def reproj_port(cam: list[Any], X: list[Any], w: Any, feat: list[float]) -> list[Any]:
    """ba.hpp's computeReprojError, scalar by scalar (complex numbers welcome)."""
    rot, centre = cam[0:3], cam[3:6]
    pt = [X[i] - centre[i] for i in range(3)]
    sqtheta = sum(r * r for r in rot)
    if sqtheta.real != 0:
        theta = cmath.sqrt(sqtheta)
        costheta, sintheta = cmath.cos(theta), cmath.sin(theta)
        w_ = [r / theta for r in rot]
        cross = [
            w_[1] * pt[2] - w_[2] * pt[1],
            w_[2] * pt[0] - w_[0] * pt[2],
            w_[0] * pt[1] - w_[1] * pt[0],
        ]
        tmp = (w_[0] * pt[0] + w_[1] * pt[1] + w_[2] * pt[2]) * (1.0 - costheta)
        xcam = [pt[i] * costheta + cross[i] * sintheta + w_[i] * tmp for i in range(3)]
    else:
        cross = [
            rot[1] * pt[2] - rot[2] * pt[1],
            rot[2] * pt[0] - rot[0] * pt[2],
            rot[0] * pt[1] - rot[1] * pt[0],
        ]
        xcam = [pt[i] + cross[i] for i in range(3)]
    proj = [xcam[0] / xcam[2], xcam[1] / xcam[2]]
    rsq = proj[0] * proj[0] + proj[1] * proj[1]
    scale = 1.0 + cam[9] * rsq + cam[10] * rsq * rsq
    proj = [proj[0] * scale * cam[6] + cam[7], proj[1] * scale * cam[6] + cam[8]]
    return [w * (proj[0] - feat[0]), w * (proj[1] - feat[1])]


def block_port(cam: np.ndarray, X: np.ndarray, w: float, feat: np.ndarray) -> np.ndarray:
    """One observation's 2 × 15 block by the complex step on the transcription."""
    point = [*cam.tolist(), *X.tolist(), float(w)]
    block = np.empty((2, 15))
    for column in range(15):
        z: list[Any] = [complex(v) for v in point]
        z[column] += 1j * STEP
        out = reproj_port(z[:11], z[11:14], z[14], feat.tolist())
        block[:, column] = [v.imag / STEP for v in out]
    return block


def ba_case(p: int = 9, seed: int = 0) -> tuple[BundleAdjustment, dict[str, Any], dict[str, Any]]:
    """A perturbed ADBench camera, point and weight; camera 1 not rotating (C++'s branch)."""
    problem = BundleAdjustment(n=3, m=4, p=p)
    data = problem.make_data()
    rng = np.random.default_rng(seed)
    params = problem.initial_params(data)
    params["cams"] = params["cams"] * (1 + 0.05 * rng.standard_normal(params["cams"].shape))
    params["cams"][1, 0:3] = 0.0
    params["x"] = params["x"] + rng.standard_normal(params["x"].shape)
    params["w"] = params["w"] + 0.1 * rng.standard_normal(p)
    data["feats"] = data["feats"] + rng.standard_normal(data["feats"].shape)
    return problem, data, params


def test_ba_residuals_are_adbenchs() -> None:
    problem, data, params = ba_case()
    out = problem.loss(params, data, np)
    obs = data["obs"].astype(int)
    for j in range(problem.p):
        want = reproj_port(
            list(params["cams"][obs[j, 0]]),
            list(params["x"][obs[j, 1]]),
            params["w"][j],
            list(data["feats"][j]),
        )
        np.testing.assert_allclose(out["reproj_err"][j], want, rtol=1e-13)
    np.testing.assert_allclose(out["w_err"], 1 - params["w"] ** 2, rtol=1e-15)


def test_ba_hand_blocks_are_the_complex_steps() -> None:
    problem, data, params = ba_case()
    obs = data["obs"].astype(int)
    cam, point = params["cams"][obs[:, 0]], params["x"][obs[:, 1]]
    block, w_block = hand_blocks(cam.T, point.T, params["w"], data["feats"].T)
    for j in range(problem.p):
        want = block_port(cam[j], point[j], params["w"][j], data["feats"][j])
        np.testing.assert_allclose(block[j], want, rtol=1e-11, atol=1e-12 * np.abs(want).max())
    np.testing.assert_allclose(w_block, -2 * params["w"], rtol=1e-15)


def adbench_sparse(problem: BundleAdjustment, data: Any, params: Any) -> dict[str, list[Any]]:
    """BASparseMat filled as ADBench's manual tool fills it, blocks from the complex step."""
    obs = data["obs"].astype(int)
    n, m = problem.n, problem.m
    rows, cols, vals = [0], [], []
    for j in range(problem.p):
        c, x = obs[j]
        block = block_port(params["cams"][c], params["x"][x], params["w"][j], data["feats"][j])
        for r in range(2):
            rows.append(rows[-1] + 15)
            cols += [11 * c + i for i in range(11)] + [11 * n + 3 * x + i for i in range(3)]
            cols.append(11 * n + 3 * m + j)
            vals += block[r].tolist()
    for j in range(problem.p):
        rows.append(rows[-1] + 1)
        cols.append(11 * n + 3 * m + j)
        vals.append(-2 * params["w"][j])
    return {"rows": rows, "cols": cols, "vals": vals}


@pytest.mark.parametrize("engine", BA_ENGINES)
def test_ba_sparse_jacobian_on_every_engine(engine: str) -> None:
    require_engine(engine)
    problem, data, params = ba_case()
    got = sparse(
        problem, data["obs"], *block_jacobian(gradlab.get_engine(engine), problem, params, data)()
    )
    want = adbench_sparse(problem, data, params)
    assert got.rows.tolist() == want["rows"]
    assert got.cols.tolist() == want["cols"]
    tolerance = 1e-6 if engine == "fd" else 1e-11
    scale = np.maximum(1.0, np.abs(want["vals"]))
    assert np.max(np.abs(got.vals - want["vals"]) / scale) < tolerance
    # And the layout is the dense Jacobian's: entry (row, col) of gradlab.jacobian.
    if engine == "torch":
        dense = gradlab.jacobian(problem, data, params, engine="torch")
        matrix = np.concatenate(
            [
                np.concatenate(
                    [dense[out][name].reshape(size, -1) for name in ("cams", "x", "w")], axis=1
                )
                for out, size in (("reproj_err", 2 * problem.p), ("w_err", problem.p))
            ]
        )
        np.testing.assert_allclose(got.dense(), matrix, rtol=1e-12, atol=1e-12)


# -- ADBench's hand, transcribed -------------------------------------------------------------


def ht_port(
    theta: np.ndarray, us: np.ndarray | None, problem: HandTracking, data: Any
) -> np.ndarray:
    """ht.hpp's objective, loop by loop, on 3 × 3 and 4 × 4 matrices (complex allowed)."""
    bones = len(problem.parents)
    pose = np.zeros((3, bones + 3), dtype=theta.dtype)  # C++'s pose_params: one per column
    pose[:, 0], pose[:, 1], pose[:, 2] = theta[0:3], 1.0, theta[3:6]
    i_theta, i_pose = 6, 5
    for _ in range(5):
        for i in range(2, 5):
            pose[0, i_pose] = theta[i_theta]
            i_theta += 1
            if i == 2:
                pose[1, i_pose] = theta[i_theta]
                i_theta += 1
            i_pose += 1
        i_pose += 1
    relatives = []
    for i in range(bones):
        tx, tz, ty = pose[0, i + 3], pose[1, i + 3], pose[2, i + 3]
        rx = np.eye(3, dtype=theta.dtype)
        rx[1, 1], rx[2, 1] = np.cos(tx), np.sin(tx)
        rx[1, 2], rx[2, 2] = -rx[2, 1], rx[1, 1]
        ry = np.eye(3, dtype=theta.dtype)
        ry[0, 0], ry[0, 2] = np.cos(ty), np.sin(ty)
        ry[2, 0], ry[2, 2] = -ry[0, 2], ry[0, 0]
        rz = np.eye(3, dtype=theta.dtype)
        rz[0, 0], rz[1, 0] = np.cos(tz), np.sin(tz)
        rz[0, 1], rz[1, 1] = -rz[1, 0], rz[0, 0]
        tr = np.eye(4, dtype=theta.dtype)
        tr[:3, :3] = rz @ ry @ rx
        relatives.append(data["base_relatives"][i] @ tr)
    absolutes: list[np.ndarray] = []
    for i, parent in enumerate(problem.parents):
        absolutes.append(relatives[i] if parent == -1 else absolutes[parent] @ relatives[i])
    positions = np.zeros((3, data["base_positions"].shape[0]), dtype=theta.dtype)
    for i in range(bones):
        current = absolutes[i] @ data["inverse_base_absolutes"][i] @ data["base_positions"].T
        positions += current[:3] * data["weights"][:, i]
    if problem.mirrored:
        positions[0] *= -1
    angle_axis = pose[:, 0]
    norm = np.sqrt(np.sum(angle_axis * angle_axis))
    if abs(norm.real) < 1e-4:
        rotation = np.eye(3, dtype=theta.dtype)
    else:
        x, y, z = angle_axis / norm
        s, c = np.sin(norm), np.cos(norm)
        rotation = np.array(
            [
                [x * x + (1 - x * x) * c, x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
                [x * y * (1 - c) + z * s, y * y + (1 - y * y) * c, y * z * (1 - c) - x * s],
                [x * z * (1 - c) - y * s, z * y * (1 - c) + x * s, z * z + (1 - z * z) * c],
            ]
        )
    positions = rotation @ positions + pose[:, 2:3]
    corr = data["correspondences"].astype(int)
    err = np.empty((len(corr), 3), dtype=theta.dtype)
    for i, target in enumerate(corr):
        if us is None:
            err[i] = data["points"][i] - positions[:, target]
        else:
            verts = data["triangles"][target].astype(int)
            hand = (
                us[i, 0] * positions[:, verts[0]]
                + us[i, 1] * positions[:, verts[1]]
                + (1 - us[i, 0] - us[i, 1]) * positions[:, verts[2]]
            )
            err[i] = data["points"][i] - hand
    return err


def ht_case(complicated: bool, mirrored: bool = False) -> tuple[HandTracking, Any, Any]:
    problem = HandTracking(points=5, complicated=complicated, mirrored=mirrored)
    data = problem.make_data(9, seed=3)
    return problem, data, problem.initial_params(data, seed=3)


@pytest.mark.parametrize(("complicated", "mirrored"), [(True, False), (False, True)])
def test_ht_residuals_are_adbenchs(complicated: bool, mirrored: bool) -> None:
    problem, data, params = ht_case(complicated, mirrored)
    want = ht_port(params["theta"], params.get("us"), problem, data)
    np.testing.assert_allclose(problem.loss(params, data, np), want, rtol=1e-12, atol=1e-12)


def ht_complex_step(problem: HandTracking, data: Any, params: Any) -> np.ndarray:
    """GradBench's columns (∂/∂u₀, ∂/∂u₁ of each point's own us, then ∂/∂θ), by the complex
    step on the transcription."""
    theta, us = params["theta"], params.get("us")
    columns = []
    if us is not None:
        for k in range(2):
            shifted = us.astype(complex)
            shifted[:, k] += 1j * STEP  # each point's own u: its rows see only it
            columns.append(ht_port(theta.astype(complex), shifted, problem, data).imag / STEP)
    for k in range(theta.shape[0]):
        moved = theta.astype(complex)
        moved[k] += 1j * STEP
        out = ht_port(moved, None if us is None else us.astype(complex), problem, data)
        columns.append(out.imag / STEP)
    return np.stack([column.reshape(-1) for column in columns], axis=1)


@pytest.mark.parametrize(
    ("engine", "complicated"),
    # Every engine on the complicated case; the simple one (no us) on two: jax compiles
    # the unrolled bone chain for each (seconds).
    [*((engine, True) for engine in HT_ENGINES), ("numpy", False), ("torch", False)],
)
def test_ht_jacobian_on_every_engine(engine: str, complicated: bool) -> None:
    require_engine(engine)
    problem, data, params = ht_case(complicated)
    got = jacobian(gradlab.get_engine(engine), problem, params, data)()
    want = ht_complex_step(problem, data, params)
    assert got.shape == (3 * problem.points, 28 if complicated else 26)
    tolerance = 1e-6 if engine == "fd" else 1e-11
    assert np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))) < tolerance


def test_the_default_hand_is_adbenchs() -> None:
    # GradBench's big model's bones.txt: a root, then five chains of four from it.
    assert HAND_PARENTS == (
        -1,
        0,
        1,
        2,
        3,
        0,
        5,
        6,
        7,
        0,
        9,
        10,
        11,
        0,
        13,
        14,
        15,
        0,
        17,
        18,
        19,
        0,
    )


# -- through the protocol ---------------------------------------------------------------------


def answer(engine: str, module: str, function: str, input: Any) -> dict[str, Any]:
    message = {"id": 1, "kind": "evaluate", "module": module, "function": function}
    reply = Tool(gradlab.get_engine(engine)).answer(message | {"input": input})
    assert reply is not None
    json.dumps(reply, allow_nan=False)  # strict JSON
    return reply


def test_ba_outputs_are_gradbenchs_reduced_form() -> None:
    input = EVALS["ba"].example(3, n=4, m=6, p=10) | {"min_runs": 1, "min_seconds": 0}
    case = EVALS["ba"].read(input)
    assert isinstance(case.problem, BundleAdjustment)
    objective = answer("numpy", "ba", "objective", input)["output"]
    want = reproj_port(input["cam"], input["x"], input["w"], input["feat"])
    assert objective["reproj_error"]["repeated"] == 10
    np.testing.assert_allclose(objective["reproj_error"]["elements"], want, rtol=1e-13)
    assert objective["w_err"] == {"element": 1 - input["w"] ** 2, "repeated": 10}
    output = answer("jax", "ba", "jacobian", input)["output"]
    full = adbench_sparse(case.problem, case.data, case.params)
    for key in ("rows", "cols"):
        assert output[key] == full[key][:30] + full[key][-1:]
        assert all(type(value) is int for value in output[key])
    np.testing.assert_allclose(output["vals"], full["vals"][:30] + full["vals"][-1:], rtol=1e-11)


def test_ht_simple_and_complicated_through_the_protocol() -> None:
    for complicated in (True, False):
        input = EVALS["ht"].example(2, v=9, c=4, complicated=complicated)
        input |= {"min_runs": 1, "min_seconds": 0}
        case = EVALS["ht"].read(input)
        problem = case.problem
        assert isinstance(problem, HandTracking)
        assert problem.complicated is complicated
        objective = answer("numpy", "ht", "objective", input)["output"]
        want = ht_port(case.params["theta"], case.params.get("us"), problem, case.data)
        np.testing.assert_allclose(objective, want.reshape(-1), rtol=1e-12, atol=1e-12)
        rows = answer("torch-fwd", "ht", "jacobian", input)["output"]
        assert len(rows) == 12
        assert {len(row) for row in rows} == {28 if complicated else 26}


@pytest.mark.parametrize(
    ("engine", "module", "complaint"),
    [
        ("complex-step", "ht", "not analytic"),
        ("mlx", "ba", "Jacobian"),
    ],
)
def test_engines_without_the_derivative_say_so_at_define(
    engine: str, module: str, complaint: str
) -> None:
    require_engine(engine)
    reply = Tool(gradlab.get_engine(engine)).answer({"id": 0, "kind": "define", "module": module})
    assert reply is not None
    assert reply["success"] is False
    assert complaint in reply["error"], reply["error"]


def ht_input(**changes: Any) -> dict[str, Any]:
    input: dict[str, Any] = EVALS["ht"].example(0, v=9, c=3) | {"min_runs": 1, "min_seconds": 0}
    for path, value in changes.items():
        *outer, last = path.split("__")
        target = input
        for key in outer:
            target = target[key]
        target[last] = value
    return input


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        (
            {"data__correspondences": [0, 1, 99]},
            "'data.correspondences' must hold integers in [0, 18)",
        ),
        (
            {"data__correspondences": [0, 1, 1.5]},
            "'data.correspondences' must be a 1-D array of integers",
        ),
        ({"data__model__bone_count": 23}, "'data.model.bone_count' is 23"),
        ({"data__model__parents": [-1, *range(2, 23)]}, "bone 1's parent is 2"),
        ({"data__model__is_mirrored": 0}, "'data.model.is_mirrored' must be true or false"),
        ({"data": [1.0]}, "input field 'data' must be a JSON object"),
        ({"us": None}, "input field 'us' must be an array"),
        ({"us": [[0.1, 0.2]]}, "input field 'us' has shape (1, 2), expected 3×2"),
        ({"theta": [0.0] * 25}, "input field 'theta' has shape (25,), expected 26"),
    ],
)
def test_ht_inputs_are_checked_naming_the_field(changes: dict[str, Any], complaint: str) -> None:
    reply = answer("numpy", "ht", "objective", ht_input(**changes))
    assert reply["success"] is False
    assert complaint in reply["error"], reply["error"]


def test_ba_inputs_are_checked_naming_the_field() -> None:
    good = EVALS["ba"].example(0, n=2, m=2, p=3) | {"min_runs": 1, "min_seconds": 0}
    for field, value, complaint in [
        ("cam", [1.0] * 10, "'cam' has shape (10,), expected 11"),
        ("w", "0.4", "'w' must be a number"),
        ("p", 0, "'p' must be an integer ≥ 1"),
        ("feat", [1.0, None], "'feat' must be a 1-D array of numbers"),
    ]:
        reply = answer("numpy", "ba", "objective", good | {field: value})
        assert reply["success"] is False
        assert complaint in reply["error"], reply["error"]
