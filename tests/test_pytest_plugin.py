"""gradlab's pytest plug-in, run by pytest itself (``pytester``), and ``assert_same_model``.

The test files and the output shown in docs/pytest.md are the ones run and matched here:
the page's ``# <file>.py`` blocks are written out and run, and each ``<!-- output: ... -->``
block is matched against what pytest prints (numbers and spacing as wildcards).

Oracles: what the page promises, read from it; the engines gradlab lists (``engine_info``,
which knows nothing of the plug-in); the baseline files on disk (JSON); faults planted in
one operation or one parameter's derivative, whose place the failure must name.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradlab
from gradlab.engines._protocol import capabilities_of
from gradlab.engines._registry import default_engines
from gradlab.testing import assert_same_model

PAGE = Path(__file__).resolve().parent.parent / "docs" / "pytest.md"
#: The inner runs: no xdist (fast), strict, warnings as errors, and test files imported
#: under their paths (the outer suite has a ``test_engines`` module of its own).
INNER = (
    *("-p", "no:xdist", "-p", "no:cacheprovider", "--strict-markers", "-W", "error"),
    "--import-mode=importlib",
)


def page_files() -> dict[str, str]:
    """The page's Python blocks that are files (their first line ``# name.py``), by name."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    return {
        match.group(1): block
        for block in blocks
        if (match := re.match(r"# (\w+\.py)\n", block)) is not None
    }


def page_output(key: str) -> list[str]:
    """fnmatch patterns for the output the page shows under ``<!-- output: key -->``:
    every line with words in it, numbers and runs of spaces as wildcards (they vary with
    the machine and the versions; the words, their order and the names do not)."""
    found = re.search(
        rf"<!-- output: {re.escape(key)} -->\n```text\n(.*?)```", PAGE.read_text(), re.DOTALL
    )
    assert found is not None, f"docs/pytest.md shows no output {key!r}"
    patterns = []
    for line in found.group(1).splitlines():
        if not re.search(r"[A-Za-z]", line.removeprefix("E")):
            continue  # blank "E" lines and rules match anything: they would misalign
        line = re.sub(r"\d[\d.e+\-:T]*", "\0", line)
        line = "".join(f"[{c}]" if c in "[]*?" else c for c in line)
        line = re.sub(r"\s+", "*", line.replace("\0", "*"))
        patterns.append("*" + re.sub(r"\*+", "*", line) + "*")
    return patterns


def assert_shown(result: pytest.RunResult, key: str) -> None:
    """The run printed what the page shows under ``key``, in order; but the rows of a table
    of parameters (``['fc1.weight']``), which is sorted by numbers and so may come in
    another order on another machine, in any order."""
    patterns = page_output(key)
    rows = [pattern for pattern in patterns if "[[]'" in pattern]
    result.stdout.fnmatch_lines([pattern for pattern in patterns if pattern not in rows])
    for row in rows:
        result.stdout.fnmatch_lines([row])


def run(pytester: pytest.Pytester, *args: str, frameworks: bool = False) -> pytest.RunResult:
    """pytest on the files written, in this process; where the tests import a framework,
    in a process of their own: an in-process run's newly imported modules are dropped
    from ``sys.modules`` after it, and torch and jax cannot be imported twice."""
    if frameworks:
        return pytester.runpytest_subprocess(*INNER, *args)
    return pytester.runpytest(*INNER, *args)


def require(*modules: str) -> None:
    """Skip unless ``modules`` are installed, without importing them: a test using
    ``pytester`` must not import a framework (pytester drops from ``sys.modules`` what a
    test imports, and torch cannot be imported twice in one process)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


def write_page_files(pytester: pytest.Pytester, *names: str) -> None:
    files = page_files()
    for name in names:
        pytester.path.joinpath(name).write_text(files[name])


# -- Loading -----------------------------------------------------------------------------------


def test_loading_the_plugin_imports_no_framework() -> None:
    # A fresh interpreter: in this one, other tests have imported the frameworks already.
    frameworks = ("torch", "jax", "tensorflow", "mlx", "flax", "equinox", "keras")
    code = (
        "import sys, gradlab.pytest_plugin; "
        f"print(sorted(m for m in {frameworks!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_marker_is_registered_and_the_plugin_can_be_turned_off(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.gradlab_engines(*names, exclude=(), needs=()):*"])
    pytester.makepyfile(test_off="def test_x(gradlab_engine):\n    pass\n")
    result = run(pytester, "-p", "no:gradlab")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'gradlab_engine' not found*"])


# -- Every installed engine ------------------------------------------------------------------

TESTS = """
import pytest

def test_default(gradlab_engine):
    pass

@pytest.mark.gradlab_engines("all")
def test_all(gradlab_engine):
    pass

@pytest.mark.gradlab_engines("torch,jax", "mlx", "torch")
def test_named(gradlab_engine):
    pass

@pytest.mark.gradlab_engines("default", exclude=["fd", "jax"])
class TestExcluded:
    def test_method(self, gradlab_engine):
        pass

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.gradlab_engines("numpy")
def test_with_another_parameter(gradlab_engine, dtype):
    pass
"""


def collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_tests_are_parametrised_over_the_engines_chosen(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_choice=TESTS)
    infos = gradlab.engine_info(load=False)
    default = [info.name for info in infos if info.default]
    every = [info.name for info in infos]

    def ids(test: str, names: list[str]) -> list[str]:
        return [f"test_choice.py::{test}[{name}]" for name in names]

    expected = [
        *ids("test_default", default),
        *ids("test_all", every),
        *ids("test_named", ["torch", "jax", "mlx"]),
        *ids("TestExcluded::test_method", [n for n in default if n not in ("fd", "jax")]),
        "test_choice.py::test_with_another_parameter[numpy-float32]",
        "test_choice.py::test_with_another_parameter[numpy-float64]",
    ]
    assert collected(run(pytester, "--collect-only", "-q")) == expected
    # --gradlab-engines chooses for the tests whose marker names none.
    result = run(pytester, "--collect-only", "-q", "--gradlab-engines=numpy,complex-step")
    assert collected(result)[:2] == ids("test_default", ["numpy", "complex-step"])
    assert collected(result)[2:] == expected[len(default) :]


def test_an_engine_that_is_not_installed_or_not_capable_is_skipped_with_why(
    pytester: pytest.Pytester,
) -> None:
    # An engine whose module is missing, registered for this run only.
    pytester.makeconftest(
        """
import gradlab

def pytest_configure(config):
    gradlab.register_engine(
        "not-here", gradlab.engines.NumpyEngine, requires=["gradlab_no_such_module"]
    )

def pytest_unconfigure(config):
    gradlab.unregister_engine("not-here")
"""
    )
    pytester.makepyfile(
        test_skips="""
import pytest
import gradlab

@pytest.mark.gradlab_engines("numpy", "not-here", "complex-step", needs="hvp")
def test_hvp(gradlab_engine):
    problem = gradlab.Quadratic()
    point = {"w": 1.0, "b": 0.0}
    gradlab.hvp(problem, problem.make_data(5), point, point, engine=gradlab_engine)
"""
    )
    try:
        result = run(pytester, "-rs")
    finally:
        gradlab.unregister_engine("not-here")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED*engine 'not-here' needs gradlab_no_such_module, which is not installed*",
            "SKIPPED*engine 'complex-step' has no hvp*",
        ]
    )


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('"toch"', "gradlab_engines: unknown engine 'toch'; did you mean 'torch'? Known *"),
        ('"numpy", exclude="fdd"', "exclude: unknown engine 'fdd'; did you mean 'fd'?*"),
        ('needs="hessian"', "gradlab_engines: needs has 'hessian', which is not a capab*"),
        ('"numpy", kind="hvp"', "gradlab_engines takes exclude= and needs=, not kind"),
        ("3", "gradlab_engines: must be engine names (strings), got 3"),
    ],
)
def test_a_marker_with_a_mistake_fails_the_collection_saying_which(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
import pytest

@pytest.mark.gradlab_engines({marker})
def test_x(gradlab_engine):
    pass
"""
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*Traceback*")


def test_an_unknown_engine_on_the_command_line_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--gradlab-engines=numpy,jx")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --gradlab-engines: unknown engine 'jx'; did you mean 'jax'?*"]
    )


def test_the_marker_on_a_test_without_the_argument_fails_the_collection(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_forgot="""
import pytest

@pytest.mark.gradlab_engines("numpy")
def test_x():
    pass
"""
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*test_x: marked gradlab_engines but takes no gradlab_engine argument; add it*"]
    )


def test_a_failing_engine_fails_its_own_test_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fails="""
import pytest

@pytest.mark.gradlab_engines("numpy", "fd")
def test_x(gradlab_engine):
    assert gradlab_engine == "numpy", "planted"
"""
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_fails.py::test_x[[]fd[]] - AssertionError: planted*"])


# -- Baselines --------------------------------------------------------------------------------

BASELINE = Path("baselines", "test_baselines", "test_the_gradients_have_not_changed.json")


def test_baselines_round_trip_as_the_page_shows(pytester: pytest.Pytester) -> None:
    write_page_files(pytester, "test_baselines.py")
    stored = pytester.path / BASELINE
    # No baseline: the test fails, saying how to write it, and writes nothing.
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert_shown(result, "pytest test_baselines.py")
    assert not stored.parent.exists()
    # Written on request, and listed.
    result = run(pytester, "--gradlab-update-baselines")
    result.assert_outcomes(passed=1)
    assert_shown(result, "pytest test_baselines.py --gradlab-update-baselines")
    record = json.loads(stored.read_text())
    assert (record["kind"], record["engines"]) == ("GradientReport", ["numpy", "fd"])
    # Now it passes, and rewriting it changes nothing.
    run(pytester).assert_outcomes(passed=1)
    result = run(pytester, "--gradlab-update-baselines")
    result.stdout.fnmatch_lines([f"{BASELINE} (unchanged)"])
    # numpy's gradient moved by one part in a million since (and numpy's version): fails
    # with the comparison's table.
    record["values"]["numpy"]["w"] *= 1 + 1e-6
    record["provenance"]["numpy"] = "1.0.0"
    stored.write_text(json.dumps(record))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert_shown(result, "pytest test_baselines.py, after an upgrade")
    # Rewriting says what changed, and the test passes again.
    result = run(pytester, "--gradlab-update-baselines")
    result.stdout.fnmatch_lines(
        [f"{BASELINE} (Regression against the baseline: gradients changed on numpy.)"]
    )
    run(pytester).assert_outcomes(passed=1)


def test_a_baseline_of_something_else_fails_saying_what_differs(pytester: pytest.Pytester) -> None:
    write_page_files(pytester, "test_baselines.py")
    run(pytester, "--gradlab-update-baselines").assert_outcomes(passed=1)
    test = pytester.path / "test_baselines.py"
    test.write_text(test.read_text().replace('"b": -0.5', '"b": -0.25'))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"the stored baseline {BASELINE} is not of what this test computes now: baseline: "
            "was taken at other parameters: b is -0.5 there, -0.25 here*",
            "If the test changed on purpose, rewrite it: `pytest --gradlab-update-baselines*",
        ]
    )


def test_baselines_are_named_by_test_parameters_and_name(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_named="""
import pytest
import gradlab

problem = gradlab.Quadratic()
data = problem.make_data(20, seed=2)

class TestModel:
    @pytest.mark.gradlab_engines("numpy,fd")
    def test_fit(self, gradlab_engine, gradlab_baseline):
        options = dict(engine=gradlab_engine, init={"w": 1.0, "b": 0.0}, steps=5)
        for name, optimizer in (("sgd", gradlab.sgd(0.01)), ("adam", gradlab.adam(0.01))):
            gradlab_baseline(gradlab.fit(problem, data, optimizer=optimizer, **options), name)

def test_located(gradlab_baseline):
    def loss(p, d, xp):
        return xp.sum(gradlab.tap("h", xp.tanh(d["x"] * p["w"])) ** 2)

    model = gradlab.Problem(loss, name="tanh")
    located = gradlab.locate(model, data, {"w": 0.5}, engines="fd,complex-step")
    gradlab_baseline(located)

def test_twice(gradlab_baseline):
    report = gradlab.compare_gradients(problem, data, {"w": 1.0, "b": 0.0}, engines="numpy")
    gradlab_baseline(report)
    gradlab_baseline(report)

def test_not_a_result(gradlab_baseline):
    gradlab_baseline({"w": 1.0})

def test_a_bad_name(gradlab_baseline):
    report = gradlab.compare_gradients(problem, data, {"w": 1.0, "b": 0.0}, engines="numpy")
    gradlab_baseline(report, name="../up")
"""
    )
    result = run(pytester, "--gradlab-update-baselines")
    result.assert_outcomes(passed=3, failed=3)
    folder = pytester.path / "baselines" / "test_named"
    assert sorted(path.name for path in folder.iterdir()) == [
        f"TestModel.test_fit[{engine}]-{name}.json"
        for engine in ("fd", "numpy")
        for name in ("adam", "sgd")
    ] + ["test_located.json", "test_twice.json"]
    saved = gradlab.load(str(folder / "TestModel.test_fit[fd]-adam.json"))
    assert (type(saved).__name__, saved.engine) == ("FitResult", "fd")
    result.stdout.fnmatch_lines(
        [
            "*gradlab: 6 baselines written*",
            "baselines/test_named/TestModel.test_fit[[]numpy[]]-sgd.json (new)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E * gradlab.ArgumentError: name: this test has already checked its baseline "
            "test_twice.json: give each result a name of its own*",
            "E * gradlab.ArgumentTypeError: result: must be a result gradlab keeps as a "
            "baseline*got dict",
            "E * gradlab.ArgumentError: name: must be a short name of letters*'../up'",
        ]
    )
    result.stdout.no_fnmatch_line("*gradlab/pytest_plugin.py*")  # the test's frames only
    # Compared, each fit and the located points against their own baselines.
    run(pytester, "-k", "test_fit or test_located").assert_outcomes(passed=3)


def test_baselines_under_xdist_are_written_by_the_workers_and_listed(
    pytester: pytest.Pytester,
) -> None:
    require("xdist")
    pytester.makepyfile(
        test_spread="""
import pytest
import gradlab

@pytest.mark.gradlab_engines("numpy", "fd")
def test_gradient(gradlab_engine, gradlab_baseline):
    problem = gradlab.Quadratic()
    report = gradlab.compare_gradients(
        problem, problem.make_data(20, seed=3), {"w": 1.0, "b": 0.0}, engines=[gradlab_engine]
    )
    gradlab_baseline(report)
"""
    )
    # In a process of its own: xdist's controller threads must not outlive an in-process
    # run. Both workers collect: xdist fails a run whose workers collected other tests.
    args = ("-n", "2", "-p", "no:cacheprovider", "--import-mode=importlib", "-W", "error")
    result = pytester.runpytest_subprocess(*args, "--gradlab-update-baselines")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*gradlab: 2 baselines written*"])
    folder = pytester.path / "baselines" / "test_spread"
    assert sorted(path.name for path in folder.iterdir()) == [
        "test_gradient[fd].json",
        "test_gradient[numpy].json",
    ]
    run(pytester).assert_outcomes(passed=2)


# -- One model in two frameworks --------------------------------------------------------------


def test_the_pages_test_files_run_as_shown(pytester: pytest.Pytester) -> None:
    # One run for the page's engine tests and its ports: each run that imports torch and
    # jax costs seconds.
    require("torch", "jax")
    files = ("test_engines.py", "mymodel.py", "test_equivalence.py", "test_flax_eps.py")
    write_page_files(pytester, *files)
    result = run(pytester, "-v", "-rs", frameworks=True)
    # The page shows numpy, torch, jax and fd; an installed plug-in engine (in the default
    # set) runs each engine test too: its gradient, and its HVP where it has one.
    extras = [
        gradlab.get_engine(name)
        for name in default_engines()
        if name not in ("numpy", "torch", "jax", "fd") and name in gradlab.available_engines()
    ]
    with_hvp = sum(capabilities_of(engine)["hvp"] for engine in extras)
    result.assert_outcomes(
        passed=8 + len(extras) + with_hvp, skipped=1 + len(extras) - with_hvp, failed=1
    )
    assert_shown(result, "pytest -v -rs test_engines.py")
    result.stdout.fnmatch_lines(
        ["test_equivalence.py::test_the_jax_port_is_the_torch_model PASSED*"]
    )
    assert_shown(result, "pytest test_flax_eps.py")
    result.stdout.no_fnmatch_line("*gradlab/testing.py*")  # the frames shown are the test's


def test_the_replacement_of_an_hf_test_is_at_most_ten_lines() -> None:
    lines = page_files()["test_equivalence.py"].splitlines()[1:]  # its name's comment
    assert len(lines) <= 10, lines


def _ports(
    *,
    input_scale: float = 1.0,
    bfloat16: bool = False,
    fc2_grad_factor: float = 1.0,
    tanh_grad_factor: float = 1.0,
    tap: bool = True,
) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A two-layer network in torch and in jax; the jax port may scale its input (a forward
    fault at the first point), compute its activation in bfloat16, compute the derivative
    of its output layer in ``w2`` wrong (a fault in one parameter's gradient alone) or
    tanh's derivative wrong (a backward fault), or tap nothing."""
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def plain_project(h: Any, w: Any) -> Any:
        return h @ w

    project = jax.custom_vjp(plain_project)

    def project_forward(h: Any, w: Any) -> Any:
        return h @ w, (h, w)

    def project_backward(saved: Any, g: Any) -> Any:
        h, w = saved
        return g @ w.T, fc2_grad_factor * (h.T @ g)

    project.defvjp(project_forward, project_backward)

    def plain_tanh(z: Any) -> Any:
        return jnp.tanh(z)

    tanh = jax.custom_vjp(plain_tanh)

    def tanh_forward(z: Any) -> Any:
        return jnp.tanh(z), jnp.tanh(z)

    def tanh_backward(value: Any, g: Any) -> Any:
        return (tanh_grad_factor * g * (1 - value**2),)

    tanh.defvjp(tanh_forward, tanh_backward)

    def mark(name: str, value: Any) -> Any:
        return gradlab.tap(name, value) if tap else value

    def torch_loss(p: Any, d: Any) -> Any:
        h = mark("act", torch.tanh(mark("fc1", d["x"] @ p["w1"])))
        return 0.5 * ((mark("fc2", h @ p["w2"]) - d["y"]) ** 2).sum()

    def jax_loss(p: Any, d: Any) -> Any:
        z = mark("fc1", input_scale * d["x"] @ p["w1"])
        h = mark("act", tanh(z.astype(jnp.bfloat16) if bfloat16 else z)).astype(z.dtype)
        return 0.5 * ((mark("fc2", project(h, p["w2"])) - d["y"]) ** 2).sum()

    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(6, 3)), "y": rng.normal(size=(6, 2))}
    params = {"w1": rng.normal(size=(3, 4)), "w2": rng.normal(size=(4, 2))}
    return gradlab.NativeProblem(name="two_layer", torch=torch_loss, jax=jax_loss), data, params


def _message(problem: Any, data: Any, params: Any, dtype: str = "float64") -> str:
    with pytest.raises(gradlab.Disagreement) as failure:
        assert_same_model(problem, data, params, dtype=dtype)
    return str(failure.value)


def test_a_forward_fault_at_the_first_point_points_before_it() -> None:
    message = _message(*_ports(input_scale=1.001))
    assert message.startswith("two_layer: jax parts from torch forward at 'fc1'")
    assert (
        "Where to look: the operations before 'fc1' (from the inputs and parameters to it) "
        "in torch's and jax's implementations" in message
    )
    assert "(2 of 2 parameters)" in message


def test_a_lower_precision_is_named_as_such() -> None:
    message = _message(*_ports(bfloat16=True), dtype="float32")
    assert "explained by bfloat16 in jax at 'act'" in message
    assert (
        "Where to look: the gap is the size of the round-off of bfloat16 in jax at 'act': one "
        "implementation computes there in a lower precision than float32" in message
    )


def test_a_fault_in_one_parameters_derivative_is_named_with_its_bound() -> None:
    message = _message(*_ports(fc2_grad_factor=1.001))
    assert message.startswith(
        "two_layer: jax parts from torch in the gradient of 'w2' (no tapped point parts)"
    )
    assert "no tapped point parts, so the difference lies where no tap reads" in message
    # w2's row alone, 1e-3 relative against a bound of round-off's size: far over it.
    table = message.split("the furthest over first:\n")[1].split("\n\n")[0].splitlines()
    assert table[0].split() == ["parameter", "engine", "rho", "bound", "rho/bound"]
    assert [row.split()[:2] for row in table[2:]] == [["w2", "jax"]]
    rho, bound, ratio = map(float, table[2].split()[2:])
    assert 1e-4 < rho < 1e-3  # |a − b| / (|a| + |b|) of a 1e-3 relative change
    assert bound < 1e-12
    assert ratio == pytest.approx(rho / bound, rel=0.1)
    assert "(1 of 2 parameters)" in message


def test_a_backward_fault_points_at_the_derivative_between_two_points() -> None:
    message = _message(*_ports(tanh_grad_factor=1.01))
    assert "jax parts from torch backward at 'fc1'" in message
    assert (
        "Where to look: the derivative of the operations between 'fc1' and 'act' in torch's "
        "and jax's implementations: every forward value agrees" in message
    )
    assert "jax.custom_vjp" in message


def test_untapped_ports_are_judged_by_their_gradients() -> None:
    report = assert_same_model(*_ports(tap=False))
    assert isinstance(report, gradlab.GradientReport)
    assert report.ok
    message = _message(*_ports(tap=False, fc2_grad_factor=1.001))
    assert message.startswith("two_layer: jax parts from torch in the gradient at w2[")
    assert "Where to look: no implementation taps a point" in message
    assert "(1 of 2 parameters)" in message


def test_ports_tapped_under_other_names_pass_on_their_gradients_and_fail_naming_them() -> None:
    problem, data, params = _ports()
    renamed = {"jax": {"fc1": "dense1", "act": "tanh1", "fc2": "dense2"}}
    report = assert_same_model(problem, data, params, names=renamed)
    assert report.compared == 0  # nothing compared, and the gradients agree
    bad, _, _ = _ports(fc2_grad_factor=1.001)
    with pytest.raises(gradlab.Disagreement, match="no point was compared") as failure:
        assert_same_model(bad, data, params, names=renamed)
    assert "translate them with names=" in str(failure.value)


def test_bad_arguments_are_still_gradlab_errors() -> None:
    problem, data, params = _ports()
    with pytest.raises(gradlab.ArgumentError, match="dtype"):
        assert_same_model(problem, data, params, dtype="float16")
    with pytest.raises(gradlab.ArgumentError, match="engines"):
        assert_same_model(problem, data, params, engines="torch")
