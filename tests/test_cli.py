"""The command line, run as a user runs it: in a subprocess, reading its output and status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import cli_in_process, default_engines

import gradlab
from gradlab import recipes


def gradlab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gradlab", *args], capture_output=True, text=True, timeout=600
    )


def test_demo_runs_every_installed_engine_and_they_agree() -> None:
    out = gradlab_cli("demo")
    assert out.returncode == 0, out.stderr
    table = out.stdout
    for engine in default_engines():
        assert f"\n{engine.rjust(6)}  " in table or f"\n{engine} " in table, engine
    # The seed's NumPy run lands at a w and b the table must show (9 decimals).
    reference = recipes.seed_numpy().run("numpy")
    assert f"{float(reference.params['w']):.9f}" in table
    assert f"{float(reference.params['b']):.9f}" in table
    assert "All" in table
    assert "agree" in table
    # It says what it ran, and which installed engines it left out and how to run them.
    ran = [name for name in default_engines() if name in gradlab.available_engines()]
    assert f"Engines: {', '.join(ran)} (the default set" in table
    opt_in = [
        name
        for name in gradlab.available_engines()
        if name not in default_engines() and name in gradlab.known_engines()
    ]
    if opt_in:
        assert f"installed, opt-in: {', '.join(opt_in)}, run when named in --engines" in table


def test_demo_can_run_the_torch_recipe_on_chosen_engines() -> None:
    out = gradlab_cli("demo", "--recipe", "torch", "--engines", "numpy,fd")
    if "torch" not in gradlab.available_engines():
        assert out.returncode == 2
        assert "gradlab[torch]" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert "float32" in out.stdout
    assert "Engines: numpy, fd\n" in out.stdout  # named: no default set to explain


def test_unknown_engine_is_a_usage_error_with_a_suggestion() -> None:
    out = gradlab_cli("demo", "--engines", "numpy,jaxx")
    assert out.returncode == 2
    assert "did you mean 'jax'" in out.stderr
    assert "Traceback" not in out.stderr


def test_usage_errors_exit_2_with_help() -> None:
    assert gradlab_cli().returncode == 2
    out = gradlab_cli("demo", "--repeats", "0")
    assert out.returncode == 2
    assert "repeats" in out.stderr
    out = gradlab_cli("demo", "--recipe", "nope")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
    helped = gradlab_cli("demo", "--help")
    assert helped.returncode == 0
    assert "--engines" in helped.stdout


def test_console_script_entry_point_is_installed() -> None:
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "gradlab"]
    assert script.value == "gradlab.cli:main"


def test_every_command_has_help() -> None:
    for command, option in [("demo", "--plot"), ("compare", "--params"), ("fit", "--optimizer")]:
        out = gradlab_cli(command, "--help")
        assert out.returncode == 0, command
        assert option in out.stdout
        for shared in ("--quiet",):
            assert shared in out.stdout
    top = gradlab_cli("--help")
    assert all(command in top.stdout for command in ("demo", "compare", "fit"))


def test_compare_prints_the_report_and_exits_0_when_engines_agree() -> None:
    out = gradlab_cli(
        "compare", "--problem", "quadratic", "--engines", "numpy,fd", "--params", "w=1.5", "b=-2"
    )
    assert out.returncode == 0, out.stderr
    assert "Gradient agreement: quadratic, float64, at w=1.5, b=-2" in out.stdout
    # The numbers printed are the hand gradient at that point, computed here independently.
    data = gradlab.Quadratic().make_data(100, seed=0)
    residual = 1.5 * data["x"] ** 2 - 2 - data["y"]
    assert f"{0.5 * np.sum(residual**2):.9g}" in out.stdout


def test_compare_json_in_float32_on_a_linear_problem() -> None:
    out = gradlab_cli(
        "compare",
        "--problem",
        "linear_regression",
        "--features",
        "2",
        "--dtype",
        "float32",
        "--engines",
        "numpy,fd",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["dtype"] == "float32"
    assert record["ok"] is True
    assert len(record["values"]["fd"]["w"]) == 2
    assert record["verdicts"]["fd"]["tolerance"] == gradlab.tolerance("float32", against_fd=True)


def test_compare_hessian() -> None:
    out = gradlab_cli(
        "compare", "--hessian", "--problem", "logistic_regression", "--engines", "numpy,fd"
    )
    assert out.returncode == 0, out.stderr
    assert "Hessian agreement: logistic_regression" in out.stdout


def test_compare_kind_jacobian_compares_jacobians() -> None:
    # A scalar loss's Jacobian is its gradient as one row: numpy runs the hand gradient.
    common = ("--problem", "logistic_regression", "--engines", "numpy,fd", "--n", "20")
    out = gradlab_cli("compare", "--kind", "jacobian", *common)
    assert out.returncode == 0, out.stderr
    assert "Jacobian agreement: logistic_regression" in out.stdout
    assert "∂f/∂" in out.stdout  # fd's worst element, named as a Jacobian's
    out = gradlab_cli("compare", "--kind", "jacobian", "--json", *common)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["derivative"] == "jacobian"
    assert np.shape(record["values"]["fd"]["jacobian"]) == (1, 4)  # one output; w (3) and b


def test_compare_kind_hessian_is_the_hessian_flag() -> None:
    common = ("--problem", "logistic_regression", "--engines", "numpy,fd", "--n", "20")
    by_kind = gradlab_cli("compare", "--kind", "hessian", *common)
    by_flag = gradlab_cli("compare", "--hessian", *common)
    assert by_kind.returncode == by_flag.returncode == 0, by_kind.stderr + by_flag.stderr
    assert by_kind.stdout == by_flag.stdout
    assert "Hessian agreement: logistic_regression" in by_kind.stdout
    gradient = gradlab_cli("compare", "--kind", "gradient", *common)
    assert gradient.returncode == 0, gradient.stderr
    assert gradient.stdout == gradlab_cli("compare", *common).stdout
    assert "Gradient agreement: logistic_regression" in gradient.stdout


def test_compare_exits_1_when_an_engine_disagrees() -> None:
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests")
        from _helpers import cli_in_process, default_engines, PlantedBug
        import gradlab
        from gradlab.cli import main
        gradlab.register_engine("planted", PlantedBug)
        raise SystemExit(main(["compare", "--engines", "numpy,fd,planted"]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr
    assert "suspect planted" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "--problem", "cubic"], "--problem: unknown problem 'cubic'"),
        (["compare", "--params", "w=1,2", "b=0", "--engines", "numpy"], "w got 2 value(s)"),
        (["compare", "--params", "z=1", "--engines", "numpy"], "has no parameter 'z'"),
        (["compare", "--params", "w", "--engines", "numpy"], "or NAME=VALUES, got 'w'"),
        (["compare", "--params", "w=abc", "--engines", "numpy"], "must be numbers"),
        (["compare", "--engines", "numpy,tourch"], "did you mean 'torch'"),
        (["compare", "--dtype", "float16"], "invalid choice: 'float16'"),
        (["compare", "--n", "0"], "--n: must be a positive integer"),
        (["fit", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
        (["fit", "--stop-loss=-1"], "--stop-loss"),
        (["fit", "--patience", "0"], "--patience"),
        (["fit", "--batch-size", "1000"], "--batch-size: is 1000"),
        (["fit", "--lr=-1"], "--lr: must be a positive"),
        (["fit", "--steps", "0"], "--steps"),
        (["fit", "--init", "w=1,2"], "w got 2 value(s)"),
        (["fit", "--json", "--plot", "/no/such/folder/fit.png"], "does not exist"),
        (["fit", "--plot", "fit.jpg"], ".png, .pdf or .svg"),
        (["demo", "--plot", "/no/such/folder/demo.png"], "does not exist"),
        # Every failure names the flag the user wrote, not the library's argument.
        (["fit", "--seed=-1"], "--seed: must be a non-negative integer"),
        (["fit", "--engine", "nmupy"], "--engine: unknown engine 'nmupy'"),
        (["compare", "--reference", "bogus", "--engines", "numpy"], "--reference: unknown"),
        (["compare", "--kind", "jacobain"], "--kind: unknown comparison kind 'jacobain'"),
        # Hessian-vector products need a tangent the command line does not take.
        (["compare", "--kind", "hvp"], "known: gradient, hessian, jacobian"),
        (["compare", "--engines", "numpy,", "--n", "5"], "--engines: has an empty name"),
        (["fit", "--n", "10000000000"], "--n: is 10000000000"),
        # Empty strings are refused alike everywhere.
        (["fit", "--plot", ""], "--plot:"),
        (["bench", "--out", ""], "--out: must name a file stem"),
        (["demo", "--engines", ""], "--engines: is empty"),
        (["compare", "--engines", ""], "--engines: is empty"),
        (["bench", "--engines", "", "--sizes", "10"], "--engines: is empty"),
        # Paths are tried, not guessed from permission bits (which do not bind root).
        (["fit", "--plot", "/proc/fit.png"], "--plot: cannot write"),
        (["bench", "--out", "/proc/results", "--sizes", "10"], "--out: cannot write"),
        (["fit", "--plot", "/"], "--plot:"),
    ],
)
def test_usage_errors_exit_2_with_a_message_and_no_traceback(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (test_usage_errors_exit_2_with_help runs refusals as a user does):
    # anything but a refusal would raise here, and fail the test with its traceback.
    status, out, err = cli_in_process(capsys, *args)
    assert status == 2, (out, err)
    assert message in err
    assert out == ""  # refused before any work was done


def test_fit_runs_and_prints_json() -> None:
    out = gradlab_cli(
        "fit",
        "--problem",
        "quadratic",
        "--engine",
        "numpy",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--steps",
        "5000",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["status"] == "completed"
    assert record["optimizer"] == {"name": "adam", "lr": 0.01}
    assert len(record["losses"]) == 5000
    # Independent oracle: least squares on (x², 1) is where adam should have arrived.
    data = gradlab.Quadratic().make_data(100, seed=0)
    design = np.column_stack([data["x"] ** 2, np.ones(100)])
    w, b = np.linalg.lstsq(design, data["y"], rcond=None)[0]
    assert record["params"]["w"] == pytest.approx(w, rel=1e-6)
    assert record["params"]["b"] == pytest.approx(b, rel=1e-6)


def test_fit_exits_1_when_it_diverges() -> None:
    out = gradlab_cli("fit", "--lr", "5", "--steps", "200")
    assert out.returncode == 1
    assert "diverged at step" in out.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["fit", "--steps", "100"],
        ["compare", "--engines", "numpy,fd"],
        ["demo", "--engines", "numpy", "--repeats", "1"],
    ],
)
def test_plot_option_writes_a_png(command: list[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "picture.png"
    out = gradlab_cli(*command, "--plot", str(target))
    assert out.returncode == 0, out.stderr
    assert target.read_bytes()[:4] == b"\x89PNG"
    assert f"Plot written to {target}" in out.stdout


def test_no_progress_bar_when_output_is_not_a_terminal() -> None:
    out = gradlab_cli("compare", "--engines", "numpy,fd")
    assert "\r" not in out.stderr
    assert out.stderr == ""


def test_progress_bar_shows_when_enabled_and_stays_quiet_when_not() -> None:
    pytest.importorskip("tqdm")
    import io

    from gradlab._progress import progress_bar

    shown = io.StringIO()
    with progress_bar(2, "fits", True, file=shown, delay=0) as advance:
        advance("numpy")
        advance("fd")
    assert "fits:" in shown.getvalue()
    assert "/2 [" in shown.getvalue()
    hidden = io.StringIO()
    with progress_bar(2, "fits", False, file=hidden, delay=0) as advance:
        advance("numpy")
    assert hidden.getvalue() == ""


def test_fit_takes_mini_batches_and_stop_rules() -> None:
    def fit(*options: str) -> dict[str, Any]:
        out = gradlab_cli(
            "fit",
            "--problem",
            "linear_regression",
            "--engine",
            "numpy",
            "--lr",
            "0.1",
            "--steps",
            "3000",
            "--json",
            *options,
        )
        assert out.returncode == 0, out.stderr
        record: dict[str, Any] = json.loads(out.stdout)
        return record

    full = fit("--stop-grad-norm", "1e-3")
    assert (full["status"], full["stop_reason"]) == ("converged", "grad_norm")
    assert full["step"] < 3000
    # Mini-batch noise keeps the loss from improving for ever: patience ends the fit.
    batched = fit("--batch-size", "10", "--patience", "100")
    assert (batched["status"], batched["stop_reason"]) == ("converged", "patience")


def test_demo_mlp_frameworks_compares_three_implementations() -> None:
    for name in ("torch", "jax"):
        if name not in gradlab.available_engines():
            pytest.skip(f"{name} is not installed")
    out = gradlab_cli(
        "demo", "--recipe", "mlp-frameworks", "--engines", "numpy,torch,jax", "--repeats", "1"
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "All 3 engines' gradients agree within tolerance." in text
    assert "Hessian-vector products agree within tolerance." in text
    assert "All 3 engines follow the same path within tolerance" in text
    assert "layers[0].kernel" in text


USER_MODULE = """
import numpy as np
import gradlab


class Poisson(gradlab.AbstractProblem):
    name = "poisson"

    def loss(self, params, data, xp):
        rate = xp.exp(data["x"] @ params["glm"]["w"] + params["glm"]["b"])
        return xp.sum(rate - data["y"] * xp.log(rate))

    def make_data(self, n, *, seed=0):
        rng = np.random.default_rng(seed)
        x = 0.3 * rng.standard_normal((n, 2))
        return {"x": x, "y": rng.poisson(np.exp(x @ [0.5, -0.2] + 0.1)).astype(float)}

    def initial_params(self, data, *, seed=0):
        return {"glm": {"w": np.zeros(2), "b": np.zeros(())}}


poisson = Poisson()
make_poisson = Poisson
no_data = gradlab.Problem(lambda p, d, xp: xp.sum(p["a"] ** 2), params={"a": (2,)})
number = 3


def broken():
    raise RuntimeError("cannot build")
"""


def user_cli(cwd: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``gradlab`` script, run in ``cwd`` (where the user's module is)."""
    script = os.path.join(os.path.dirname(sys.executable), "gradlab")
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_problem_from_a_module_or_a_file(tmp_path: Any) -> None:
    (tmp_path / "mymodels.py").write_text(USER_MODULE)
    for spec in ("mymodels:poisson", "mymodels:make_poisson", "./mymodels.py:poisson"):
        out = user_cli(tmp_path, "compare", "--problem", spec, "--engines", "fd", "-q")
        assert out.returncode == 0, out.stderr
        assert "glm.w[" in out.stdout or "glm.b" in out.stdout
    out = user_cli(
        tmp_path,
        "fit",
        "--problem",
        "mymodels:poisson",
        "--engine",
        "fd",
        "--steps",
        "50",
        "--lr",
        "0.001",
        "--init",
        "glm.w=0.1,0.2",
        "-q",
    )
    assert out.returncode == 0, out.stderr
    assert "final glm.w:" in out.stdout
    assert "final glm.b:" in out.stdout
    out = user_cli(
        tmp_path,
        "bench",
        "--problems",
        "mymodels:poisson",
        "--engines",
        "fd",
        "--sizes",
        "20",
        "--min-time",
        "0.001",
        "-q",
    )
    assert out.returncode == 0, out.stderr


def test_a_problem_file_imports_the_modules_beside_it(tmp_path: Any) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "losses.py").write_text(
        "def bowl(params, data, xp):\n    return xp.sum((params['w'] - 1.0) ** 2)\n"
    )
    (folder / "model.py").write_text(
        "import gradlab\nfrom losses import bowl\n"
        "class Bowl(gradlab.AbstractProblem):\n"
        "    name = 'bowl'\n"
        "    def loss(self, params, data, xp):\n        return bowl(params, data, xp)\n"
        "    def make_data(self, n, *, seed=0):\n        return {}\n"
        "    def param_shapes(self, data):\n        return {'w': (2,)}\n"
        "bowl_problem = Bowl()\n"
    )
    out = user_cli(tmp_path, "compare", "--problem", "project/model.py:bowl_problem", "-q")
    assert out.returncode == 0, out.stderr
    assert "agree within tolerance" in out.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mymodels:missing", "'mymodels' has no attribute 'missing'"),
        ("mymodels:broken", "mymodels:broken() raised RuntimeError: cannot build"),
        ("mymodels:number", "is of type int, not a gradlab problem"),
        ("nomodule:x", "cannot import 'nomodule': ModuleNotFoundError"),
        ("./nofile.py:x", "no such file"),
        ("mymodels:", "must be module:attribute"),
    ],
)
def test_problem_that_cannot_be_loaded_is_named(tmp_path: Any, spec: str, message: str) -> None:
    (tmp_path / "mymodels.py").write_text(USER_MODULE)
    out = user_cli(tmp_path, "compare", "--problem", spec, "-q")
    assert out.returncode == 2, out
    assert "--problem: " in out.stderr, out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--engine", "numpy"],
        ["compare", "--engines", "fd,numpy"],
        ["compare", "--reference", "numpy"],
    ],
)
def test_an_engine_that_cannot_run_the_problem_names_the_flag(
    tmp_path: Any, args: list[str]
) -> None:
    (tmp_path / "mymodels.py").write_text(USER_MODULE)
    out = user_cli(tmp_path, *args, "--problem", "mymodels:poisson", "-q")
    assert out.returncode == 2, out
    flag = args[1]
    assert f"error: {flag}: problem 'poisson' has no hand-derived gradient" in out.stderr, out
    assert "Traceback" not in out.stderr


DECLARED_BY_PATH = """
import numpy as np
import gradlab


class Embedding(gradlab.Problem):
    def make_data(self, n, *, seed=0):
        return {"x": np.random.default_rng(seed).normal(size=(n, 3))}


def loss(params, data, xp):
    return 0.5 * xp.sum((data["x"] @ params["embed"]["kernel"]) ** 2)


by_path = Embedding(loss, name="by_path", params={"embed.kernel": (3, 2)})
nested = Embedding(loss, name="nested", params={"embed": {"kernel": (3, 2)}})


class NativeEmbedding(gradlab.NativeProblem):
    make_data = Embedding.make_data


native = NativeEmbedding(
    name="native", numpy=lambda p, d: loss(p, d, np), params={"embed.kernel": (3, 2)}
)
"""


@pytest.mark.parametrize(
    ("attribute", "spelling"),
    [("by_path", "embed.kernel"), ("nested", "embed['kernel']"), ("native", "['embed'].kernel")],
)
def test_a_problem_declaring_nested_parameters_by_path_runs_from_the_command_line(
    tmp_path: Any, attribute: str, spelling: str
) -> None:
    (tmp_path / "declared.py").write_text(DECLARED_BY_PATH)
    spec = f"./declared.py:{attribute}"
    values = f"{spelling}=1,2,3,4,5,6"
    out = user_cli(tmp_path, "compare", "--problem", spec, "--engines", "fd", "--params", values)
    assert out.returncode == 0, out.stderr
    assert "at embed.kernel=[[1., 2.]," in out.stdout
    out = user_cli(tmp_path, "fit", "--problem", spec, "--engine", "fd", "--steps", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert np.shape(json.loads(out.stdout)["params"]["embed"]["kernel"]) == (3, 2)


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`gradlab fit --json | head -c 100`: the rest cannot be written; no traceback."""
    command = ["fit", "--problem", "quadratic", "--engine", "numpy", "--steps", "20000"]
    process = subprocess.Popen(
        [sys.executable, "-m", "gradlab", *command, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.read(100)
    process.stdout.close()  # the reader goes away with ~400 kB still to come
    status = process.wait(timeout=300)
    with process.stderr:
        assert process.stderr.read() == b""
    assert status == 141
