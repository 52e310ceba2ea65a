"""Your data and parameters on the command line: --data and --params files.

Run in-process (``gradlab.cli.main``) for speed; ``test_cli.py`` runs the command as a
user does, in a subprocess. The oracle for what a command computed on a file is the
library called directly on the same arrays.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import cli_in_process as run
from _helpers import require_engine

import gradlab


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A linear regression's data and a point, written in each format read."""
    monkeypatch.chdir(tmp_path)
    data = gradlab.LinearRegression().make_data(40, d=3, seed=5)
    params = {"w": np.array([0.5, -1.0, 2.0]), "b": np.array(0.25)}
    np.savez("data.npz", x=data["x"], y=data["y"])
    np.save("x.npy", data["x"])
    np.save("y.npy", data["y"])
    np.savez("params.npz", w=params["w"], b=params["b"])
    return {"data": data, "params": params}


def compare_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    status, out, err = run(
        capsys, "compare", "--problem", "linear_regression", "--json", "-q", *args
    )
    assert status == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def expected_loss(files: dict[str, Any], params: dict[str, Any] | None = None) -> float:
    loss, _ = gradlab.value_and_grad(
        gradlab.LinearRegression(), files["data"], params or files["params"], engine="numpy"
    )
    return float(loss)


def test_compare_on_your_data_and_parameters(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    record = compare_json(
        capsys, "--data", "data.npz", "--params", "params.npz", "--engines", "numpy,fd"
    )
    assert record["losses"]["numpy"] == pytest.approx(expected_loss(files), rel=1e-15)


def test_one_array_files_are_named_and_words_override_the_file(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    record = compare_json(
        capsys,
        "--data", "x=x.npy", "y=y.npy",
        "--params", "params.npz", "b=3",
        "--engines", "numpy,fd",
    )  # fmt: skip
    moved = {**files["params"], "b": np.array(3.0)}
    assert record["losses"]["numpy"] == pytest.approx(expected_loss(files, moved), rel=1e-15)


def test_the_default_point_is_the_problems_initial_params(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    problem = gradlab.LinearRegression()
    start = problem.initial_params(files["data"], seed=0)
    record = compare_json(capsys, "--data", "data.npz", "--engines", "numpy,fd")
    assert record["losses"]["numpy"] == pytest.approx(expected_loss(files, start), rel=1e-15)


def test_torch_and_safetensors_files(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    safetensors = pytest.importorskip("safetensors.numpy")
    torch.save({name: torch.tensor(value) for name, value in files["params"].items()}, "p.pt")
    safetensors.save_file(
        {k: np.ascontiguousarray(v) for k, v in files["data"].items()}, "d.safetensors"
    )
    record = compare_json(
        capsys, "--data", "d.safetensors", "--params", "p.pt", "--engines", "numpy,fd"
    )
    assert record["losses"]["numpy"] == pytest.approx(expected_loss(files), rel=1e-15)


def test_a_torch_module_checkpoint_on_a_problem_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port's case: a user's NativeProblem over an nn.Module, its state_dict saved as
    .pt (dotted names: ``0.weight``), compared at that checkpoint on the user's data."""
    torch = pytest.importorskip("torch")
    require_engine("torch")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "portmodel.py").write_text(
        textwrap.dedent(
            """
            import torch, gradlab
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
            apply, start = gradlab.torch_module(net.double())

            def loss(p, d):
                return ((apply(p, d["x"])[:, 0] - d["y"]) ** 2).mean()

            problem = gradlab.NativeProblem(
                name="port", torch=loss, params={k: v.shape for k, v in start.items()}
            )
            undeclared = gradlab.NativeProblem(name="port", torch=loss)
            """
        )
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal(20)
    np.savez("data.npz", x=x, y=y)
    state = {
        k: torch.tensor(rng.standard_normal(tuple(v.shape)))
        for k, v in torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
        )
        .state_dict()
        .items()
    }
    torch.save(state, "checkpoint.pt")
    status, out, err = run(
        capsys, "compare", "--problem", "portmodel.py:problem", "--data", "data.npz",
        "--params", "checkpoint.pt", "--engines", "torch,torch-func", "--json", "-q",
    )  # fmt: skip
    assert status == 0, err
    h = np.tanh(x @ state["0.weight"].numpy().T + state["0.bias"].numpy())
    prediction = h @ state["2.weight"].numpy().T[:, 0] + state["2.bias"].numpy()
    expected = float(np.mean((prediction - y) ** 2))
    assert json.loads(out)["losses"]["torch"] == pytest.approx(expected)
    # The same checkpoint as .safetensors and .npz, and on a problem declaring no shapes.
    safetensors = pytest.importorskip("safetensors.numpy")
    numpy_state = {k: np.ascontiguousarray(v.numpy()) for k, v in state.items()}
    safetensors.save_file(numpy_state, "checkpoint.safetensors")
    with open("checkpoint.npz", "wb") as file:  # savez's keywords, by torch's dotted names
        np.savez(file, **numpy_state)  # type: ignore[arg-type]
    for problem, checkpoint in [
        ("portmodel.py:problem", "checkpoint.safetensors"),
        ("portmodel.py:problem", "checkpoint.npz"),
        ("portmodel.py:undeclared", "checkpoint.pt"),
    ]:
        status, out, err = run(
            capsys, "compare", "--problem", problem, "--data", "data.npz",
            "--params", checkpoint, "--engines", "torch,torch-func", "--json", "-q",
        )  # fmt: skip
        assert status == 0, (problem, checkpoint, err)
        assert json.loads(out)["losses"]["torch"] == pytest.approx(expected)
    # locate takes the same files (torch_module taps every submodule).
    status, out, err = run(
        capsys, "locate", "--problem", "portmodel.py:problem", "--data", "data.npz",
        "--params", "checkpoint.pt", "--engines", "torch,torch-func", "-q",
    )  # fmt: skip
    assert status == 0, err
    assert "agree at every one of the 3 points" in out


def test_fit_reads_files_and_prints_a_summary_of_a_large_model(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys, "fit", "--problem", "linear_regression", "--data", "data.npz",
        "--params", "params.npz", "--steps", "3", "-q",
    )  # fmt: skip
    assert status == 0, err
    assert "final w:" in out  # four numbers: shown
    status, out, _ = run(capsys, "fit", "--problem", "mlp", "--steps", "3", "-q")
    assert "final W0" not in out
    assert "4 arrays, 81 numbers" in out
    assert "--show-params" in out
    status, out, _ = run(capsys, "fit", "--problem", "mlp", "--steps", "3", "-q", "--show-params")
    assert "final W0:" in out


def test_bench_on_your_data(files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys, "bench", "--problems", "linear_regression", "--data", "data.npz",
        "--params", "params.npz", "--engines", "numpy", "--min-time", "0.001",
        "--fit-steps", "10", "--json", "-q",
    )  # fmt: skip
    assert status == 0, err
    cases = json.loads(out)["cases"]
    assert [(case["n"], case["status"]) for case in cases] == [(40, "measured")]


@pytest.mark.parametrize(
    ("args", "flag", "says"),
    [
        (["--data", "missing.npz"], "--data", "no such file: missing.npz"),
        (["--data", "x.npy"], "--data", "name it, as x=x.npy"),
        (["--data", "data.txt"], "--data", "unknown format '.txt'"),
        (["--data", "x=data.npz"], "--data", "holds 2 arrays (x, y)"),
        (["--data", "x=x.npy"], "--data", "must have exactly the keys 'x' and 'y'"),
        (["--data", "objects.npz"], "--data", "cannot read objects.npz"),
        (["--data", "garbage.npz"], "--data", "cannot read garbage.npz"),
        (["--data", "data.npz", "--params", "short.npz"], "--params", "lacks b"),
        (["--data", "data.npz", "--params", "extra.npz"], "--params", "has 'c', not"),
        (["--data", "data.npz", "--params", "wide.npz"], "--params", "'w' has shape (4,)"),
        (["--data", "data.npz", "--params", "words.npz"], "--params", "not numbers"),
        (["--data", "data.npz", "--params", "w=1,2"], "--params", "w got 2 value(s)"),
    ],
)
def test_bad_files_are_named_by_their_flag(
    files: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    flag: str,
    says: str,
) -> None:
    Path("data.txt").write_text("1 2 3")
    Path("garbage.npz").write_bytes(b"not a zip")
    np.save("objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez("objects.npz", x=np.array([{"a": 1}], dtype=object))
    np.savez("short.npz", w=np.ones(3))
    np.savez("extra.npz", w=np.ones(3), b=np.array(0.0), c=np.ones(2))
    np.savez("wide.npz", w=np.ones(4), b=np.array(0.0))
    np.savez("words.npz", w=np.array(["a", "b", "c"]), b=np.array(0.0))
    status, _, err = run(capsys, "compare", "--problem", "linear_regression", "-q", *args)
    assert status == 2
    assert f"error: {flag}: " in err
    assert says in err
    assert "Traceback" not in err


def test_a_pickle_in_a_file_is_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .pt file is read with weights_only: an object whose unpickling runs code is refused."""
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path("ran").write_text, ("pwned",))

    torch.save({"w": Boom()}, "evil.pt")
    status, _, err = run(capsys, "compare", "--problem", "quadratic", "--params", "evil.pt", "-q")
    assert status == 2
    assert "--params: cannot read evil.pt: it holds Python objects other than tensors" in err
    assert err.count("\n") == 1  # one line, not torch's advice to load it unsafely
    assert not Path("ran").exists()


def test_a_problem_that_makes_no_data_runs_or_names_what_its_loss_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nodata.py").write_text(
        "import gradlab\n"
        "bowl = gradlab.Problem(lambda p, d, xp: xp.sum(p['a'] ** 2), params={'a': (2,)})\n"
        "fitted = gradlab.Problem(lambda p, d, xp: xp.sum((d['x'] * p['a']) ** 2), "
        "params={'a': (2,)})\n"
    )
    status, out, err = run(capsys, "compare", "--problem", "nodata.py:bowl", "--params", "a=1,2",
                           "--engines", "fd,complex-step", "-q")  # fmt: skip
    assert status == 0, err
    assert "agree" in out
    status, _, err = run(capsys, "compare", "--problem", "nodata.py:fitted", "-q")
    assert status == 2
    assert "raised KeyError: 'x'" in err
    assert "if its loss reads data, give it with --data FILE" in err
    np.savez("z.npz", z=np.ones(2))
    status, _, err = run(
        capsys, "compare", "--problem", "nodata.py:fitted", "--data", "z.npz", "-q"
    )
    assert status == 2
    assert "--data holds z: if the loss reads that key from the data, add it" in err
    np.savez("x.npz", x=np.ones(2))
    status, out, err = run(capsys, "compare", "--problem", "nodata.py:fitted", "--data", "x.npz",
                           "--engines", "fd,complex-step", "-q")  # fmt: skip
    assert status == 0, err


def test_a_training_checkpoint_is_refused_with_what_to_save(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.ones(1), "epoch": 3}, "train.pt")
    status, _, err = run(capsys, "compare", "--problem", "quadratic", "--params", "train.pt", "-q")
    assert status == 2
    assert "'epoch' is int, not a tensor" in err
    assert "save model.state_dict() alone" in err
