"""Finding engines: names, suggestions, missing frameworks, registration, entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import gradlab
from gradlab.engines import _registry


def test_known_engines_lists_builtins_in_reference_order() -> None:
    assert gradlab.known_engines()[:4] == ("numpy", "torch", "jax", "fd")
    assert {"numpy", "fd"} <= set(gradlab.available_engines())


def test_unknown_engine_lists_known_names_and_suggests_the_closest() -> None:
    with pytest.raises(gradlab.UnknownEngine) as caught:
        gradlab.get_engine("troch")
    error = caught.value
    assert error.suggestion == "torch"
    assert "did you mean 'torch'" in str(error)
    for name in ("numpy", "torch", "jax", "fd"):
        assert name in str(error)
    assert isinstance(error, ValueError)
    assert error.argument == "engine"


def test_unknown_engine_without_a_close_match() -> None:
    with pytest.raises(gradlab.UnknownEngine) as caught:
        gradlab.get_engine("zzzzzzzz")
    assert caught.value.suggestion is None
    assert "did you mean" not in str(caught.value)


def test_engine_with_a_missing_module_is_unavailable_and_names_what_to_install() -> None:
    gradlab.register_engine(
        "needs-missing", gradlab.engines.NumpyEngine, requires=["no_such_module_for_gradlab"]
    )
    try:
        assert "needs-missing" in gradlab.known_engines()
        assert "needs-missing" not in gradlab.available_engines()
        with pytest.raises(gradlab.EngineUnavailable, match="no_such_module_for_gradlab"):
            gradlab.get_engine("needs-missing")
    finally:
        gradlab.unregister_engine("needs-missing")


@pytest.mark.parametrize(
    ("blocked", "engine", "extra"), [("torch", "torch", "torch"), ("jax", "jax", "jax")]
)
def test_builtin_engine_without_its_framework_names_the_pip_extra(
    blocked: str, engine: str, extra: str
) -> None:
    """In a fresh interpreter where the framework cannot be imported."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{blocked!r}] = None  # as if not installed
        import gradlab
        assert {engine!r} not in gradlab.available_engines(), gradlab.available_engines()
        try:
            gradlab.get_engine({engine!r})
        except gradlab.EngineUnavailable as error:
            assert error.extra == {extra!r}
            print(error)
        else:
            raise SystemExit("no error")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'gradlab[{extra}]'" in out.stdout


def test_register_refuses_taken_names_and_bad_factories() -> None:
    with pytest.raises(gradlab.ArgumentError, match="already registered"):
        gradlab.register_engine("numpy", gradlab.engines.NumpyEngine)
    with pytest.raises(gradlab.ArgumentTypeError, match="factory"):
        gradlab.register_engine("not-callable", 42)  # type: ignore[arg-type]
    with pytest.raises(gradlab.ArgumentError, match="name"):
        gradlab.register_engine("a,b", gradlab.engines.NumpyEngine)


def test_a_factory_that_returns_something_else_is_refused() -> None:
    gradlab.register_engine("returns-int", lambda: 42)  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(gradlab.ArgumentTypeError, match="not a GradientEngine"):
            gradlab.get_engine("returns-int")
    finally:
        gradlab.unregister_engine("returns-int")


def test_bad_engine_options_are_reported() -> None:
    with pytest.raises(gradlab.ArgumentError, match="options"):
        gradlab.get_engine("numpy", colour="blue")


def test_get_engine_passes_engine_objects_through() -> None:
    engine = gradlab.get_engine("fd", order=2)
    assert gradlab.get_engine(engine) is engine
    with pytest.raises(gradlab.ArgumentTypeError, match="engine"):
        gradlab.get_engine(3.5)  # type: ignore[arg-type]


def _install_plugin(root: Path, module_source: str) -> None:
    """Lay out an installed distribution by hand: a module and its dist-info entry point."""
    (root / "gradlab_test_plugin.py").write_text(textwrap.dedent(module_source))
    info = root / "gradlab_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gradlab-test-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[gradlab.engines]\nplugged = gradlab_test_plugin:PluggedEngine\n"
    )


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("gradlab_test_plugin", None)
    _registry._reload_entry_points()


def test_engines_are_discovered_through_entry_points(plugin_path: Path) -> None:
    _install_plugin(
        plugin_path,
        """
        import gradlab

        class PluggedEngine(gradlab.engines.NumpyEngine):
            name = "plugged"
    """,
    )
    _registry._reload_entry_points()
    assert "plugged" in gradlab.available_engines()
    result = gradlab.recipes.seed_numpy().run("plugged", steps=10)
    assert result.engine == "plugged"
    assert result.ok


def test_an_entry_point_whose_import_fails_is_unavailable(plugin_path: Path) -> None:
    _install_plugin(
        plugin_path,
        """
        import no_such_framework_for_gradlab

        class PluggedEngine:
            pass
    """,
    )
    _registry._reload_entry_points()
    assert "plugged" in gradlab.known_engines()
    assert "plugged" not in gradlab.available_engines()
    with pytest.raises(gradlab.EngineUnavailable, match="no_such_framework_for_gradlab"):
        gradlab.get_engine("plugged")


def test_an_engine_whose_framework_is_installed_but_does_not_load_is_unavailable() -> None:
    # ``pip install mlx`` on Linux gives the package without its CPU backend: the module is
    # found, but importing it fails. The engine is unavailable, naming its extra.
    code = textwrap.dedent("""
        import importlib, importlib.util, sys
        import gradlab

        real = importlib.import_module

        def broken(name, *args):
            if name == "mlx.core":
                raise ImportError("libmlx.so: cannot open shared object file", name="mlx.core")
            return real(name, *args)

        importlib.import_module = broken
        sys.modules.pop("mlx.core", None)
        try:
            gradlab.get_engine("mlx")
        except gradlab.EngineUnavailable as error:
            print(error)
        else:
            raise SystemExit("no error")
    """)
    if "mlx" not in gradlab.available_engines():
        pytest.skip("mlx is not installed")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'gradlab[mlx]'" in out.stdout
