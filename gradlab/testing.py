"""The conformance suite every gradlab engine passes, for third-party engines too.

Every built-in engine runs these tests (``tests/engines/test_conformance.py``); a plug-in runs the
same ones with one class in its own test suite:

```python
from gradlab.testing import EngineConformance


class TestMyEngine(EngineConformance):
    engine = "my-engine"  # the registered name (or an engine object)
```

pytest collects the inherited tests. What they check, for every shipped problem, in
float32 and float64:

- **agreement**: the gradient against gradlab's hand derivations (the ``numpy`` engine)
  and finite differences, to round-off for an exact engine (rho ≤ 1e-12 in float64), within
  gradlab's finite-difference tolerances for an approximate one; Hessian-vector products,
  per-example gradients and Jacobians where the engine offers them;
- **the loop**: the seed tutorial's fit, and a mini-batch Adam fit, land where the hand
  derivation's do;
- **dtypes**: results in the dtype asked for;
- **global state**: NumPy's and every imported framework's global settings, the
  environment and the warning filters are as they were;
- **bad input**: a bad dtype, bad parameters and a loss that fails or returns a Python
  number give gradlab errors naming the argument, the problem and the engine, never a
  framework's traceback; the caller's arrays are never written.

[`assert_same_model`][gradlab.testing.assert_same_model] is the check for a model ported
between frameworks: [`locate`][gradlab.locate] as an assertion, whose failure names the
first point where the ports part.

A problem the engine declines (``NotSupported``, e.g. complex step on a loss that is not
analytic) is skipped with the engine's reason. Needs pytest (it is a test suite).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

import gradlab
from gradlab._errors import ArgumentError, GradlabError, NotSupported, ProblemError
from gradlab.engines._protocol import capabilities_of, is_approximate
from gradlab.problems._named import NAMED_PROBLEMS, at_size

__all__ = ["EngineConformance", "assert_same_model", "global_state"]

#: rho an exact engine may differ by from the hand derivation in float64 (round-off of the
#: largest shipped problems; observed ≤ 1e-14).
EXACT = 1e-12
#: Problems with a hand-derived Hessian-vector product.
_WITH_HVP = ("quadratic", "rosenbrock", "log_sum_exp", "softmax_regression")


def _setup(name: str, size: int = 7, rows: int = 40) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A shipped problem at a small size, its data and parameters drawn from fixed seeds."""
    problem = at_size(NAMED_PROBLEMS[name](), size)
    data = problem.make_data(rows, seed=3)
    rng = np.random.default_rng(4)
    shapes = problem.param_shapes(problem.check_data(data)) or {}
    params = {key: 0.5 * rng.standard_normal(shape) for key, shape in shapes.items()}
    return problem, data, params


def assert_same_model(
    problem: Any,
    data: Any = None,
    params: Any = None,
    *,
    engines: Any = None,
    dtype: str = "float64",
    names: Any = None,
    seed: int = 0,
) -> Any:
    """Assert that implementations of one model agree at every tapped point, forward and
    backward, and in every parameter's gradient, within what round-off explains:
    [`locate`][gradlab.locate] as a test.

    Import it into a test suite (gradlab's pytest plug-in is documented beside it, in
    "Checking models in pytest"). Every bound is derived from the computation itself (8
    times how far round-off-sized moves of the parameters move each value, never under 32
    ulps), not a tolerance raised by hand. A failure's message says:

    - where the implementations first part: the point, forward or backward, the engine,
      its rho against the bound there, and the last point that still agreed;
    - where to look: the operations between those two points, a hand-written backward, a
      lower precision, or what to tap when no point could be compared;
    - every parameter whose gradient parts, the furthest over its bound first, with its
      rho, the bound and the ratio;
    - then the whole table.

    The gradients are the verdict and the points the diagnosis: where no point is
    compared (no implementation taps one, or each taps other names), the gradients alone
    are judged, with the bounds of ``compare_gradients(..., tolerance="derived")``, and a
    failure says what to tap to learn which operation parts.

    Args:
        problem: As for [`locate`][gradlab.locate].
        data: As for ``locate``.
        params: As for ``locate``.
        engines: As for ``locate``.
        dtype: As for ``locate``.
        names: As for ``locate``.
        seed: As for ``locate``.

    Returns:
        The [`DivergenceReport`][gradlab.DivergenceReport], when they agree (its ``ok`` is
        false when no point was compared); a [`GradientReport`][gradlab.GradientReport]
        when no implementation taps a point.

    Raises:
        Disagreement: an ``AssertionError``; they part beyond round-off.
        ArgumentError: bad arguments, as for ``locate``.

    Examples:
        >>> import numpy as np, gradlab
        >>> from gradlab.testing import assert_same_model
        >>> def loss(p, d, xp):
        ...     return xp.sum(gradlab.tap("h", xp.tanh(d["x"] * p["w"])) ** 2)
        >>> model = gradlab.Problem(loss, name="tanh")
        >>> data, params = {"x": np.linspace(-1, 1, 5)}, {"w": np.array(0.7)}
        >>> report = assert_same_model(model, data, params, engines="torch,jax")
        >>> report.ok, report.compared
        (True, 1)
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not gradlab's
    try:
        report = gradlab.locate(
            problem, data, params, engines=engines, dtype=dtype, names=names, seed=seed
        )
    except ArgumentError as error:
        if error.argument != "problem" or "reached no tap" not in str(error):
            raise
        return _assert_same_gradients(problem, data, params, engines, dtype, seed)
    if report.first is None:
        return report
    rows = [
        (path, engine, value, bound)
        for path, (rhos, bound) in report.gradients.items()
        for engine, value in rhos.items()
    ]
    raise gradlab.Disagreement(
        f"{report.problem}: {report.summary()}\n\n"
        f"Where to look: {_where_to_look(report)}\n\n"
        f"{_parted_parameters(rows, len(report.gradients))}\n\n{report}",
        report,
    )


def _assert_same_gradients(
    problem: Any, data: Any, params: Any, engines: Any, dtype: str, seed: int
) -> Any:
    """``assert_same_model`` where no implementation taps a point: the gradients alone,
    each pair judged by its derived bound."""
    __tracebackhide__ = True
    from gradlab.comparison._locate import initial_point

    data = {} if data is None else data
    params = initial_point(problem, data, seed) if params is None else params
    report = gradlab.compare_gradients(
        problem, data, params, engines=engines, dtype=dtype, tolerance="derived"
    )
    if report.ok:
        return report
    reference = report.engines.index(report.reference)
    expected = report.values[report.reference]
    rows = [
        (
            path,
            engine,
            gradlab.max_rho({path: value}, {path: expected[path]}),
            float(report.tolerances[reference, index]),
        )
        for index, engine in enumerate(report.engines)
        if engine != report.reference
        for path, value in report.values[engine].items()
    ]
    parted = [verdict for verdict in report.verdicts.values() if not verdict.agrees]
    headline = report.summary()
    if parted:  # else the reference itself is the outlier: the summary says so
        worst = max(parted, key=lambda verdict: verdict.rho / verdict.tolerance)
        headline = (
            f"{worst.engine} parts from {report.reference} in the gradient at {worst.worst}: "
            f"rho {worst.rho:.1e} against a round-off bound of {worst.tolerance:.1e} (no "
            "point tapped)"
        )
    raise gradlab.Disagreement(
        f"{report.problem}: {headline}\n\n"
        "Where to look: no implementation taps a point, so which operation parts cannot be "
        "told. Mark points with gradlab.tap(name, x), the same names in each implementation "
        "(a torch module wrapped by gradlab.torch_module is tapped at every submodule), and "
        "this failure will name the first one where they part.\n\n"
        f"{_parted_parameters(rows, len(report.params))}\n\n{report}",
        report,
    )


def _where_to_look(report: Any) -> str:
    """What a failed ``assert_same_model`` should make its reader look at, from where the
    implementations first part (``report.first``)."""
    first = report.first
    ports = f"{report.reference}'s and {first.engine}'s implementations"
    if first.verdict != "unexplained":
        return (
            f"the gap is the size of the round-off of {first.verdict}: one implementation "
            f"computes there in a lower precision than {report.dtype} (a cast, mixed "
            f"precision or a precision setting). Compute it in {report.dtype} if the ports "
            "should match to round-off."
        )
    if first.direction == "forward":
        span = (
            f"between {first.after!r} and {first.name!r}"
            if first.after is not None
            else f"before {first.name!r} (from the inputs and parameters to it)"
        )
        return (
            f"the operations {span} in {ports}: every value before {first.name!r} agrees, "
            f"the value there does not. Tap points between them (gradlab.tap) to narrow it "
            "down."
        )
    if first.direction == "backward":
        span = (
            f"between {first.name!r} and {first.after!r}"
            if first.after is not None
            else f"between {first.name!r} and the loss"
        )
        return (
            f"the derivative of the operations {span} in {ports}: every forward value "
            "agrees, the backward pass parts there. Look for a hand-written backward "
            "(torch.autograd.Function, jax.custom_vjp), a detach or stop_gradient, or an "
            "operation the frameworks differentiate differently at a kink (abs, relu, max)."
        )
    if report.compared == 0:
        unmatched = ", ".join(repr(name) for name in list(report.unmatched)[:4])
        more = ", ..." if len(report.unmatched) > 4 else ""
        return (
            f"no point was compared: each of the {len(report.points)} points reached "
            f"({unmatched}{more}) is reached by one engine only. Tap the same names in every "
            "implementation, or translate them with names={'jax': {'their name': 'our "
            "name'}}, and this failure will name the first operation where they part."
        )
    return (
        f"no tapped point parts, so the difference lies where no tap reads: before the first "
        f"point, after the last, or in how {first.name!r} enters the model (a layout, a "
        f"transpose, a tied weight). Tap the points where {first.name!r} is used."
    )


def _parted_parameters(rows: list[tuple[str, str, float, float]], count: int) -> str:
    """The ``(parameter, engine, rho, bound)`` rows beyond their bound as a table, the
    furthest over first (at most ten), out of ``count`` parameters."""
    from gradlab._output import table

    over = sorted(
        (row for row in rows if row[2] > row[3]), key=lambda row: row[2] / row[3], reverse=True
    )
    if not over:
        return f"Every one of the {count} parameters' gradients agrees within its bound."
    shown = [
        [path, engine, f"{value:.1e}", f"{bound:.1e}", f"{value / bound:.1e}"]
        for path, engine, value, bound in over[:10]
    ]
    parameters = len({row[0] for row in over})
    lines = [
        f"Gradients beyond their round-off bound ({parameters} of {count} parameters), the "
        "furthest over first:",
        table(["parameter", "engine", "rho", "bound", "rho/bound"], shown),
    ]
    if len(over) > 10:
        lines.append(f"... and {len(over) - 10} more")
    return "\n".join(lines)


def global_state() -> dict[str, Any]:
    """NumPy's and every imported framework's process-wide settings, the environment and the
    warning filters: what an engine must leave as it found it. Frameworks not imported are
    not imported here."""
    state: dict[str, Any] = {
        "environ": dict(os.environ),
        "warnings": list(warnings.filters),
        "numpy": (np.geterr(), np.get_printoptions(), _rng_state()),
    }
    modules = sys.modules
    if "torch" in modules:
        torch = modules["torch"]
        state["torch"] = (
            torch.get_default_dtype(),
            torch.get_num_threads(),
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            torch.are_deterministic_algorithms_enabled(),
        )
    if "jax" in modules:
        config = modules["jax"].config
        state["jax"] = (config.jax_enable_x64, config.jax_default_matmul_precision)
    if "tensorflow" in modules:
        tf = modules["tensorflow"]
        state["tensorflow"] = (
            tf.config.functions_run_eagerly(),
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
            # Set on every tensor by tf.experimental.numpy's process-wide NumPy behaviour.
            hasattr(tf.Tensor, "T"),
        )
    if "mlx.core" in modules:
        mx = modules["mlx.core"]
        state["mlx"] = (str(mx.default_device()), str(mx.default_stream(mx.default_device())))
    return state


def _rng_state() -> str:
    kind, keys, position, *_ = np.random.get_state()  # noqa: NPY002 - the legacy global state
    return f"{kind}:{int(np.sum(keys))}:{position}"


def _layer(params: Any, data: Any, xp: Any) -> Any:
    """A vector-valued function for the Jacobian tests: a tanh layer, and a norm."""
    return {
        "out": xp.tanh(data["x"] @ params["w"] + params["b"]),
        "norm": xp.sum(params["w"] ** 2),
    }


def _layer_jacobian(params: Any, data: Any) -> Any:
    """Its Jacobian by hand: d tanh(u)/du = 1 − tanh(u)²."""
    slope = 1 - np.tanh(data["x"] @ params["w"] + params["b"]) ** 2
    return {
        "out": {"w": slope[:, None] * data["x"], "b": slope},
        "norm": {"w": 2 * params["w"], "b": np.zeros_like(params["b"])},
    }


def _hand(loss: Any, params: Any, data: Any) -> Any:
    """A "hand gradient" that runs ``loss`` (the numpy engine calls it, not the loss)."""
    return loss(params, data, np), params


def _references(engine: Any) -> list[str]:
    """What an engine is checked against: the hand derivation, and finite differences
    (the hand derivation alone for an approximate engine; fd alone for ``numpy``)."""
    if engine.name == "numpy":
        return ["fd"]
    return ["numpy"] if is_approximate(engine) or engine.name == "fd" else ["numpy", "fd"]


@contextlib.contextmanager
def _skipped_if_declined() -> Iterator[None]:
    """Skip, with the engine's reason, what the engine declines (``NotSupported``)."""
    try:
        yield
    except NotSupported as declined:
        pytest.skip(str(declined))


class EngineConformance:
    """Subclass it in a test file and set ``engine``: pytest runs the whole suite on it.

    Attributes:
        engine: The engine under test: a registered name, or an engine object.
        problems: The shipped problems to run (default: all of them).
        options: Options for the engine, as ``get_engine(engine, **options)`` takes them
            (``{"device": "cuda"}``); where the device is not there, the suite is skipped.
        known_disagreements: ``{(problem, dtype): reason}``: a defect of the framework that
            gradlab must go on finding there (an expected failure, which fails once the
            framework is fixed, until the entry is removed).

    Examples:
        >>> from gradlab.testing import EngineConformance
        >>> class TestNumpy(EngineConformance):
        ...     engine = "numpy"
        >>> len([name for name in dir(TestNumpy) if name.startswith("test_")])
        11
    """

    engine: ClassVar[Any] = None
    options: ClassVar[Mapping[str, Any]] = {}
    problems: ClassVar[tuple[str, ...]] = tuple(NAMED_PROBLEMS)
    #: A framework's known defects, by ``(problem, dtype)``, with the reason: there the
    #: suite expects gradlab to *find* the disagreement (an expected failure, and a failure
    #: once the framework is fixed, until the entry is removed).
    known_disagreements: ClassVar[Mapping[tuple[str, str], str]] = {}

    def _judge(self, report: Any, engine: str, case: tuple[str, str]) -> None:
        """The engine's verdict in ``report``, unless ``case`` is a known disagreement."""
        verdict = report.verdicts[engine]
        reason = self.known_disagreements.get(case)
        if reason is not None:
            assert not verdict.agrees, f"{case} agrees now: remove it from known_disagreements"
            pytest.xfail(reason)
        assert verdict.agrees, str(report)

    def _engine(self) -> Any:
        if self.engine is None:
            pytest.fail(f"{type(self).__name__} must set engine = 'engine-name'")
        if isinstance(self.engine, str) and self.engine not in gradlab.available_engines():
            pytest.skip(f"engine {self.engine!r} is not installed")
        if not self.options:
            return gradlab.get_engine(self.engine)
        try:
            return gradlab.get_engine(self.engine, **self.options)
        except ArgumentError as error:
            if error.argument != "device":
                raise
            pytest.skip(str(error))

    def _problem(self, name: str) -> None:
        if name not in self.problems:
            pytest.skip(f"{name} is not among this engine's problems")

    # -- the protocol --------------------------------------------------------------------

    def test_satisfies_the_protocol(self) -> None:
        engine = self._engine()
        assert isinstance(engine, gradlab.GradientEngine)
        assert isinstance(engine.name, str)
        assert engine.name
        facts = engine.describe()
        assert isinstance(facts, dict)
        json.dumps(facts)  # recorded beside every result: must be JSON
        assert capabilities_of(engine)["gradient"]

    # -- agreement -----------------------------------------------------------------------

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    @pytest.mark.parametrize("name", sorted(NAMED_PROBLEMS))
    def test_gradient_agrees_with_the_hand_derivation(self, name: str, dtype: str) -> None:
        self._problem(name)
        engine = self._engine()
        problem, data, params = _setup(name)
        others = _references(engine)
        with _skipped_if_declined():
            report = gradlab.compare_gradients(
                problem, data, params, engines=[engine, *others], dtype=dtype, reference=others[0]
            )
        if engine.name in report.skipped:
            pytest.skip(report.skipped[engine.name])
        self._judge(report, engine.name, (name, dtype))
        if dtype == "float64" and not is_approximate(engine) and engine.name != "numpy":
            assert report.verdicts[engine.name].rho <= EXACT, str(report)

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    @pytest.mark.parametrize("name", _WITH_HVP)
    def test_hessian_vector_product_agrees(self, name: str, dtype: str) -> None:
        self._problem(name)
        engine = self._engine()
        if not capabilities_of(engine)["hvp"]:
            pytest.skip(f"engine {engine.name!r} computes no Hessian-vector products")
        problem, data, params = _setup(name, 5, 20)
        tangent = {
            key: np.cos(np.arange(np.size(v))).reshape(np.shape(v)) for key, v in params.items()
        }
        others = _references(engine)[:1]
        report = gradlab.compare_hessians(
            problem, data, params, tangent=tangent, engines=[engine, *others], dtype=dtype
        )
        if engine.name in report.skipped:
            pytest.skip(report.skipped[engine.name])
        self._judge(report, engine.name, (name, dtype))

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    def test_per_example_gradients_agree(self, dtype: str) -> None:
        engine = self._engine()
        problem, data, params = _setup("softmax_regression", 3, 9)
        with _skipped_if_declined():
            report = gradlab.compare_per_example_grads(
                problem, data, params, engines=[engine, *_references(engine)[:1]], dtype=dtype
            )
        if engine.name in report.skipped:
            pytest.skip(report.skipped[engine.name])
        self._judge(report, engine.name, ("softmax_regression", dtype))

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    def test_jacobian_agrees_with_finite_differences(self, dtype: str) -> None:
        engine = self._engine()
        capable = capabilities_of(engine)
        if not (capable["jacobian"] or capable["forward mode"]):
            pytest.skip(f"engine {engine.name!r} computes no Jacobians")
        layer = gradlab.Problem(_layer, jacobian=_layer_jacobian, name="tanh_layer")
        rng = np.random.default_rng(5)
        data = {"x": rng.standard_normal((6, 3))}
        params = {"w": rng.standard_normal(3), "b": np.array(0.3)}
        others = _references(engine)[:1]
        report = gradlab.compare_jacobians(
            layer, data, params, engines=[engine, *others], dtype=dtype, reference=others[0]
        )
        if engine.name in report.skipped:
            pytest.skip(report.skipped[engine.name])
        assert report.verdicts[engine.name].agrees, str(report)

    # -- the loop ------------------------------------------------------------------------

    def test_the_seed_fit_lands_where_the_seed_does(self) -> None:
        engine = self._engine()
        recipe = gradlab.recipes.seed_numpy()
        with _skipped_if_declined():
            hand, ours = recipe.run("numpy"), recipe.run(engine)
        assert ours.status == "completed"
        limit = 1e-6 if is_approximate(engine) else 1e-10
        assert gradlab.max_rho(hand.params, ours.params) <= limit

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    def test_a_mini_batch_adam_fit_follows_the_hand_derivation(self, dtype: str) -> None:
        engine = self._engine()
        problem, data, params = _setup("linear_regression", 3, 40)
        options: dict[str, Any] = {"steps": 23, "batch_size": 9, "dtype": dtype}
        hand = gradlab.fit(
            problem, data, optimizer=gradlab.adam(0.05), engine="numpy", init=params, **options
        )
        with _skipped_if_declined():
            ours = gradlab.fit(
                problem, data, optimizer=gradlab.adam(0.05), engine=engine, init=params, **options
            )
        assert ours.status == "completed"
        limit = 1e-10 if dtype == "float64" and not is_approximate(engine) else 1e-4
        assert gradlab.max_rho({"loss": hand.losses}, {"loss": ours.losses}) <= limit
        assert gradlab.max_rho(hand.params, ours.params) <= limit
        assert all(np.asarray(v).dtype == dtype for v in ours.params.values())

    # -- dtypes, global state, bad input ---------------------------------------------------

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    def test_results_have_the_requested_dtype(self, dtype: str) -> None:
        engine = self._engine()
        problem, data, params = _setup("mlp", 3, 10)
        loss, grads = gradlab.value_and_grad(problem, data, params, engine=engine, dtype=dtype)
        assert isinstance(loss, np.ndarray)
        assert loss.dtype == np.dtype(dtype)
        assert loss.shape == ()
        for key, value in params.items():
            assert (grads[key].dtype, grads[key].shape) == (np.dtype(dtype), value.shape)

    def test_global_state_is_left_as_found(self) -> None:
        engine = self._engine()  # importing a framework the first time is not a change
        problem, data, params = _setup("logistic_regression", 3, 10)
        gradlab.value_and_grad(problem, data, params, engine=engine, dtype="float32")
        before = global_state()
        for dtype in ("float32", "float64"):
            gradlab.value_and_grad(problem, data, params, engine=engine, dtype=dtype)
            with contextlib.suppress(NotSupported):  # an engine that cannot fit: complex step
                gradlab.fit(
                    problem,
                    data,
                    optimizer=gradlab.adam(0.1),
                    engine=engine,
                    init=params,
                    steps=3,
                    dtype=dtype,
                )
            if capabilities_of(engine)["hvp"]:
                gradlab.hvp(problem, data, params, params, engine=engine, dtype=dtype)
        assert global_state() == before

    def test_the_callers_arrays_are_never_written(self) -> None:
        engine = self._engine()
        problem, data, params = _setup("linear_regression", 3, 12)
        saved = copy.deepcopy((data, params))
        with _skipped_if_declined():
            result = gradlab.fit(
                problem, data, optimizer=gradlab.sgd(0.1), engine=engine, init=params, steps=4
            )
        gradlab.value_and_grad(problem, data, params, engine=engine)
        for value in result.params.values():
            value[...] = np.nan  # results are the caller's to write, not views of the input
        assert all(np.array_equal(data[k], saved[0][k]) for k in data)
        assert all(np.array_equal(params[k], saved[1][k]) for k in params)

    def test_bad_input_gives_gradlab_errors(self) -> None:
        engine = self._engine()
        problem, data, params = _setup("linear_regression", 3, 12)
        with pytest.raises(ArgumentError, match="dtype"):
            gradlab.value_and_grad(problem, data, params, engine=engine, dtype="float16")
        wrong = {**params, "w": np.ones(len(params["w"]) + 1)}
        with pytest.raises(GradlabError, match="w"):
            gradlab.value_and_grad(problem, data, wrong, engine=engine)
        with pytest.raises(GradlabError, match=r"nan|inf|finite"):
            gradlab.value_and_grad(problem, data, {**params, "b": np.nan}, engine=engine)

        def fails(p: Any, d: Any, xp: Any) -> Any:
            raise ValueError("planted failure")

        def number(p: Any, d: Any, xp: Any) -> Any:
            return 1.0

        cases = [(fails, "planted failure"), (number, "Python float")]
        # A hand gradient may return its loss as a Python number: numpy runs the hand one.
        for loss, message in cases[: 1 if engine.name == "numpy" else 2]:
            hand = functools.partial(_hand, loss)
            bad = gradlab.Problem(loss, hand, name="bad", params={"w": (3,)})
            with pytest.raises(ProblemError, match=message):
                gradlab.value_and_grad(
                    bad, {"x": np.ones((4, 3))}, {"w": np.ones(3)}, engine=engine
                )
