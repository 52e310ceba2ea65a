"""Loading a user's problem by ``module:attribute`` or ``file.py:attribute``: what a module or
factory does when it is loaded is named, and the interpreter is left as it was found."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import require_engine

import gradlab
from gradlab.problems._named import load_problem

MODULE = """
import sys
import gradlab

problem = gradlab.Quadratic()

def exits():
    sys.exit(3)

def good():
    return gradlab.Quadratic()
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "models_here.py").write_text(MODULE)
    (tmp_path / "exits_at_import.py").write_text(MODULE + "\nsys.exit(0)\n")
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("exits_at_import.py:problem", r"called sys.exit\(0\) while it was imported"),
        ("models_here.py:exits", r"models_here.py:exits\(\) called sys.exit\(3\)"),
    ],
)
def test_a_module_or_factory_that_exits_is_an_error_naming_the_argument(
    folder: Path, spec: str, message: str
) -> None:
    with pytest.raises(gradlab.ArgumentError, match=message) as caught:
        load_problem(str(folder / spec), "--problem")
    assert caught.value.argument == "--problem"
    name = spec.partition(":")[0].removesuffix(".py")
    assert not any(module.endswith(name) for module in sys.modules)  # nothing half-made kept


def test_the_cli_says_why_when_a_problem_file_exits(folder: Path) -> None:
    """It used to exit 0 with no output at all."""
    script = os.path.join(os.path.dirname(sys.executable), "gradlab")
    out = subprocess.run(
        [script, "compare", "--problem", "exits_at_import.py:problem", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )
    assert out.returncode == 2
    assert "--problem" in out.stderr
    assert "sys.exit(0)" in out.stderr


@pytest.mark.parametrize("how", ["file", "module"])
def test_loading_a_problem_leaves_sys_path_as_it_was(
    folder: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)  # a module by name is found in the working directory
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".")])
    before = list(sys.path)
    spec = str(folder / "models_here.py") + ":good" if how == "file" else "models_here:good"
    result = gradlab.benchmark(spec, 20, engines="numpy", min_time=0.001, fit_steps=2)
    assert result.cases  # it ran
    assert sys.path == before
    assert str(folder) not in sys.path


def test_a_data_parallel_engine_started_inside_a_spawning_rank_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A script without a main guard starts the engine again in each rank as the rank
    imports it: the rank says so in gradlab's words, not multiprocessing's, blamed on no
    loss."""
    require_engine("torch")
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    engine = gradlab.data_parallel("torch", processes=2)
    problem = gradlab.LinearRegression()
    data = problem.make_data(16)
    with pytest.raises(gradlab.NotSupported, match='if __name__ == "__main__"'):
        gradlab.value_and_grad(problem, data, problem.initial_params(data), engine=engine)
    engine.close()


def test_spawned_ranks_import_a_problem_module_found_in_the_working_directory(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is off sys.path after loading, yet ranks still find the module."""
    require_engine("torch")
    (folder / "line_dp.py").write_text(
        "import gradlab\n"
        "def loss(p, d, xp):\n    return xp.mean((p['w'] * d['x'] - d['y']) ** 2)\n"
        "problem = gradlab.Problem(loss, name='line_dp', reduction='mean')\n"
    )
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".")])
    problem = load_problem("line_dp:problem")
    assert str(folder) not in sys.path
    data = {"x": np.arange(8.0), "y": 2 * np.arange(8.0)}
    engine = gradlab.data_parallel("torch", processes=2)
    try:
        loss, grads = gradlab.value_and_grad(problem, data, {"w": 1.0}, engine=engine)
    finally:
        engine.close()
    # mean((x − 2x)²) = mean(x²) = 17.5 and d/dw = 2·mean((w − 2)x²) = −35, by hand.
    assert float(loss) == pytest.approx(17.5)
    assert float(grads["w"]) == pytest.approx(-35.0)


@pytest.mark.parametrize("command", ["compare", "fit"])
def test_json_output_stays_json_whatever_the_problems_code_prints(
    folder: Path, command: str
) -> None:
    (folder / "chatty.py").write_text(
        "import gradlab\nprint('imported')\n"
        "class Chatty(gradlab.Quadratic):\n"
        "    def make_data(self, n, *, seed=0):\n"
        "        print('making data')\n"
        "        return super().make_data(n, seed=seed)\n"
        "problem = Chatty()\n"
    )
    script = os.path.join(os.path.dirname(sys.executable), "gradlab")
    engines = ["--engines", "numpy,fd"] if command == "compare" else ["--engine", "numpy"]
    out = subprocess.run(
        [script, command, "--problem", "chatty.py:problem", *engines, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kind"] in ("GradientReport", "FitResult")
    assert "making data" in out.stderr  # not lost: on standard error
