"""The engine protocol: required members checked where an engine is defined or handed in,
optional members typed, the one marker for hand derivations, and facts read from the registry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from _helpers import RequiredMembersOnly

import gradlab
from gradlab._errors import EngineDefinitionError
from gradlab._loss import hand, runs_hand
from gradlab.engines import _registry
from gradlab.engines._protocol import (
    REQUIRED,
    AbstractEngine,
    Facts,
    PerExampleGradients,
    SecondDerivatives,
    VectorDerivatives,
    check_engine,
    per_row,
)

# -- Required members, checked when an engine class is made -----------------------------------


def test_an_engine_class_without_a_name_fails_where_it_is_defined() -> None:
    with pytest.raises(EngineDefinitionError) as caught:

        class Nameless(AbstractEngine):
            xp = np

            def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
                return np.asarray(array, dtype)

            def value_and_grad(self, problem: Any) -> Any:
                return problem.hand_value_and_grad

    error = caught.value
    assert isinstance(error, gradlab.GradlabError)
    assert isinstance(error, TypeError)
    assert error.missing == ("name",)
    assert "Nameless" in str(error)
    assert "lacks name" in str(error)


def test_an_engine_class_without_xp_or_value_and_grad_names_both() -> None:
    with pytest.raises(EngineDefinitionError) as caught:

        class Partial(AbstractEngine):
            name = "partial"

            def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
                return np.asarray(array, dtype)

    assert caught.value.missing == ("xp", "value_and_grad")
    assert "Partial" in str(caught.value)


def test_a_value_its_init_sets_is_declared_by_an_annotation() -> None:
    class SetsXp(AbstractEngine):
        name = "sets-xp"
        xp: Any  # __init__ sets it, as torch's engine does once torch is imported

        def __init__(self) -> None:
            self.xp = np

        def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
            return np.asarray(array, dtype)

        def value_and_grad(self, problem: Any) -> Any:
            return problem.hand_value_and_grad

    assert gradlab.get_engine(SetsXp()).xp is np


def test_abstract_bases_are_not_checked_but_their_concrete_subclasses_are() -> None:
    class Base(AbstractEngine, abstract=True):
        xp = np

        def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
            return np.asarray(array, dtype)

    class AbstractNamedBase(Base):  # the name says it: no keyword needed
        pass

    class Concrete(AbstractNamedBase):
        name = "concrete"

        def value_and_grad(self, problem: Any) -> Any:
            return problem.hand_value_and_grad

    assert Concrete().name == "concrete"
    with pytest.raises(EngineDefinitionError, match="value_and_grad"):

        class Forgot(Base):
            name = "forgot"


def test_every_builtin_engine_class_declares_the_required_members() -> None:
    for name in gradlab.known_engines():
        factory = _registry._REGISTRY[name].factory()
        if isinstance(factory, type):
            assert not [m for m in REQUIRED if not hasattr(factory, m) and m != "xp"], name


# -- Required members, checked when an engine object is handed in ----------------------------


class WithoutRun:
    """An engine object, not an AbstractEngine, that forgot ``run`` and ``describe``."""

    name = "without-run"
    xp = np

    def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
        return np.asarray(array, dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def value_and_grad(self, problem: Any) -> Any:
        return problem.hand_value_and_grad


def test_an_engine_object_without_run_is_refused_naming_engine_and_run() -> None:
    with pytest.raises(gradlab.ArgumentTypeError) as caught:
        gradlab.get_engine(WithoutRun())  # type: ignore[arg-type]
    assert caught.value.argument == "engine"
    assert "run" in str(caught.value)
    assert "describe" in str(caught.value)
    assert "WithoutRun" in str(caught.value)


def test_engine_equals_an_incomplete_object_is_refused_before_it_runs() -> None:
    problem = gradlab.Quadratic()
    data = problem.make_data(10, seed=0)
    with pytest.raises(gradlab.ArgumentTypeError, match="lacks run") as caught:
        gradlab.value_and_grad(
            problem,
            data,
            problem.initial_params,
            engine=WithoutRun(),  # type: ignore[arg-type]
        )
    assert caught.value.argument == "engine"


def test_an_engine_list_with_an_incomplete_object_names_the_list() -> None:
    with pytest.raises(gradlab.ArgumentTypeError, match="lacks run") as caught:
        _registry.engine_list(["numpy", WithoutRun()])
    assert caught.value.argument == "engines"


def test_an_abstract_engine_whose_init_forgot_a_value_is_refused() -> None:
    class ForgetsXp(AbstractEngine):
        name = "forgets-xp"
        xp: Any

        def asarray(self, array: np.ndarray, dtype: str) -> np.ndarray:
            return np.asarray(array, dtype)

        def value_and_grad(self, problem: Any) -> Any:
            return problem.hand_value_and_grad

    with pytest.raises(gradlab.ArgumentTypeError, match="lacks xp") as caught:
        gradlab.get_engine(ForgetsXp())
    assert caught.value.argument == "engine"


def test_complete_engine_objects_and_plain_garbage_read_as_before() -> None:
    engine = RequiredMembersOnly()
    assert check_engine(engine) is engine
    with pytest.raises(gradlab.ArgumentTypeError, match="must be an engine name"):
        gradlab.get_engine(42)  # type: ignore[arg-type]


def test_registering_a_class_without_the_protocols_methods_is_refused() -> None:
    with pytest.raises(gradlab.ArgumentTypeError, match="lacks run, describe") as caught:
        gradlab.register_engine("without-run", WithoutRun)  # type: ignore[arg-type]
    assert caught.value.argument == "factory"
    assert "without-run" not in gradlab.known_engines()


def test_a_factory_returning_an_incomplete_object_names_what_it_lacks() -> None:
    gradlab.register_engine("returns-partial", lambda: WithoutRun())  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(gradlab.ArgumentTypeError, match="lacks run, describe") as caught:
            gradlab.get_engine("returns-partial")
        assert caught.value.argument == "factory"
    finally:
        gradlab.unregister_engine("returns-partial")


# -- Optional members, typed -----------------------------------------------------------------


def typed(
    engine: AbstractEngine,
) -> tuple[SecondDerivatives, VectorDerivatives, PerExampleGradients]:
    """Where mypy checks that AbstractEngine's defaults have the optional Protocols' types."""
    return engine, engine, engine


def test_abstract_engine_declares_the_optional_facts() -> None:
    engine = gradlab.engines.NumpyEngine()
    assert engine.runs_hand is True
    assert gradlab.engines.FiniteDifferenceEngine.runs_hand is False
    assert typed(engine) == (engine, engine, engine)
    facts: Facts = gradlab.engines.ComplexStepEngine()  # it has every optional fact
    assert facts.loop_xp is np
    assert not facts.approximate


# -- One marker for hand derivations ---------------------------------------------------------


def test_hand_marks_and_runs_hand_reads_the_mark_or_the_bound_method() -> None:
    problem = gradlab.Quadratic()

    def derived(params: Any, data: Any) -> Any:
        return problem.hand_value_and_grad(params, data)

    assert not runs_hand(derived, problem.hand_value_and_grad)
    assert hand(derived) is derived
    assert runs_hand(derived)
    # A plug-in engine may return the problem's bound method itself.
    assert runs_hand(problem.hand_value_and_grad, problem.hand_value_and_grad)


def test_the_numpy_engines_derivations_are_marked_hand() -> None:
    problem = gradlab.Quadratic()
    engine = gradlab.engines.NumpyEngine()
    for function in (engine.value_and_grad(problem), engine.jvp(problem), engine.vjp(problem)):
        assert runs_hand(function)
    assert not runs_hand(gradlab.engines.FiniteDifferenceEngine().jvp(problem))
    assert runs_hand(per_row(engine, engine.value_and_grad(problem)))


# -- Facts read from the registry, without making the engine --------------------------------


def test_the_registry_says_which_engines_approximate() -> None:
    assert _registry.approximates("fd") is True
    for name in ("numpy", "torch", "jax", "complex-step", "torch-dp2", "no-such-engine"):
        assert _registry.approximates(name) is False, name


def test_a_registered_factory_function_is_made_to_answer() -> None:
    gradlab.register_engine("fd-made", lambda: gradlab.engines.FiniteDifferenceEngine())
    try:
        assert _registry.approximates("fd-made") is True
    finally:
        gradlab.unregister_engine("fd-made")


def test_reading_approximate_imports_no_framework() -> None:
    code = textwrap.dedent(
        """
        import sys
        from gradlab.comparison._baseline import _approximate
        from gradlab.engines._registry import approximates
        names = ("torch", "jax", "torch-compile", "jax-fwd", "mlx", "tensorflow", "jax-dp2")
        assert not any(approximates(name) or _approximate(name) for name in names)
        assert approximates("fd") and _approximate("fd")
        heavy = {"torch", "jax", "jaxlib", "tensorflow", "mlx", "array_api_compat"}
        print(sorted(heavy & {name.split(".")[0] for name in sys.modules}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
