"""The public surface: what `import gradlab` offers, and what it does not import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _helpers import require_engine

import gradlab

PUBLIC = {
    "compare_jacobians",
    "compare_per_example_grads",
    "jacobian",
    "jvp",
    "per_example_grads",
    "vjp",
    "AbstractEngine",
    "AbstractProblem",
    "ArgumentError",
    "ArgumentTypeError",
    "BenchmarkCase",
    "BenchmarkResult",
    "Disagreement",
    "EngineInfo",
    "EngineUnavailable",
    "FitComparison",
    "FitResult",
    "ForwardModeUnsupported",
    "PreparedFit",
    "Det",
    "GMM",
    "GradBenchGMM",
    "BundleAdjustment",
    "HandTracking",
    "GradientEngine",
    "GradientReport",
    "GradientTransformation",
    "GradlabError",
    "HandGradientMissing",
    "KMeans",
    "LSTM",
    "Layout",
    "LeastSquares",
    "LinearRegression",
    "LogSumExp",
    "LogisticRegression",
    "MLP",
    "MissingDependency",
    "NativeProblem",
    "NotSupported",
    "ODE",
    "PolynomialRegression",
    "Problem",
    "ProblemError",
    "Quadratic",
    "RankFailed",
    "Rosenbrock",
    "SoftmaxRegression",
    "Stop",
    "Timing",
    "UnknownEngine",
    "Verdict",
    "__version__",
    "adam",
    "adamw",
    "apply_updates",
    "available_engines",
    "engine_info",
    "benchmark",
    "BaselineComparison",
    "Change",
    "Regression",
    "load",
    # Where implementations part (issue 31).
    "tap",
    "locate",
    "DivergenceReport",
    "PointVerdict",
    "Divergence",
    # Is it stable (issue 32).
    "audit",
    "AuditReport",
    "Variation",
    "chain",
    "clip_by_global_norm",
    "compare_fits",
    "compare_gradients",
    "compare_hessians",
    "data_parallel",
    "engines",
    "fit",
    "prepare_fit",
    "get_engine",
    "hessian",
    "hvp",
    "known_engines",
    "max_rho",
    "momentum",
    "optimizers",
    "plots",
    "problems",
    "recipes",
    "rmsprop",
    "schedules",
    "register_engine",
    "rho",
    "sgd",
    "tolerance",
    "torch_module",
    "flax_module",
    "nnx_module",
    "equinox_module",
    "keras_model",
    "keras_problem",
    "unregister_engine",
    "value_and_grad",
}


def test_public_surface_is_pinned() -> None:
    """Adding or removing a public name is a decision: update this set when you make it."""
    assert set(gradlab.__all__) == PUBLIC
    for name in gradlab.__all__:
        assert hasattr(gradlab, name), name


HEAVY = {
    "torch",
    "jax",
    "jaxlib",
    "matplotlib",
    "array_api_compat",
    "pandas",
    "tqdm",
    "optax",
    "tensorflow",
    "mlx",
    "flax",
    "equinox",
    "keras",
    "safetensors",
}


def heavy_modules_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter; return the heavy top-level modules it imported."""
    probe = f"{code}\nimport sys\nprint(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split()) & HEAVY


def test_import_gradlab_imports_neither_torch_nor_jax() -> None:
    assert (
        heavy_modules_after(
            "import gradlab, gradlab.engines, gradlab.recipes, gradlab.cli, gradlab.plots"
        )
        == set()
    )


def test_listing_and_making_numpy_engines_imports_no_framework() -> None:
    code = "import gradlab\ngradlab.available_engines()\ngradlab.get_engine('numpy')\n"
    assert heavy_modules_after(code + "gradlab.get_engine('fd')") == set()


def test_listing_engines_without_loading_them_imports_no_framework() -> None:
    code = "import gradlab\ninfo = gradlab.engine_info(load=False)\nassert len(info) >= 8\n"
    assert heavy_modules_after(code) == set()


def test_the_torch_engine_imports_torch_only_when_made() -> None:
    require_engine("torch")
    assert "torch" in heavy_modules_after("import gradlab\ngradlab.get_engine('torch')")


def test_the_gradbench_tool_imports_no_framework_until_an_engine_is_made() -> None:
    assert heavy_modules_after("import gradlab.gradbench") == set()


def test_version_matches_the_installed_metadata() -> None:
    from importlib.metadata import version

    assert gradlab.__version__ == version("gradlab")


def test_errors_are_named_by_their_public_path() -> None:
    # A traceback says gradlab.ArgumentError, the name users catch, not gradlab._errors.
    errors = [
        value
        for value in vars(gradlab).values()
        if isinstance(value, type) and issubclass(value, gradlab.GradlabError)
    ]
    assert len(errors) == 13
    for error in errors:
        assert error.__module__ == "gradlab"
        assert getattr(gradlab, error.__name__) is error
    with pytest.raises(gradlab.ArgumentError) as caught:
        gradlab.sgd(-1.0)
    assert caught.exconly().startswith("gradlab.ArgumentError: lr")
