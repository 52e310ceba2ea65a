"""The public surface: what `import gradlab` offers, and what it does not import."""

from __future__ import annotations

import subprocess
import sys

import gradlab

PUBLIC = {
    "AbstractEngine",
    "AbstractProblem",
    "ArgumentError",
    "ArgumentTypeError",
    "EngineUnavailable",
    "FitResult",
    "GradientEngine",
    "GradientTransformation",
    "GradlabError",
    "HandGradientMissing",
    "LinearRegression",
    "LogisticRegression",
    "Problem",
    "Quadratic",
    "UnknownEngine",
    "__version__",
    "adam",
    "apply_updates",
    "available_engines",
    "engines",
    "fit",
    "get_engine",
    "known_engines",
    "max_rho",
    "momentum",
    "optimizers",
    "problems",
    "recipes",
    "register_engine",
    "rho",
    "sgd",
    "tolerance",
    "unregister_engine",
    "value_and_grad",
}


def test_public_surface_is_pinned() -> None:
    """Adding or removing a public name is a decision: update this set when you make it."""
    assert set(gradlab.__all__) == PUBLIC
    for name in gradlab.__all__:
        assert hasattr(gradlab, name), name


def test_import_gradlab_imports_neither_torch_nor_jax() -> None:
    code = (
        "import sys, gradlab, gradlab.engines, gradlab.recipes, gradlab.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'jax', 'jaxlib', 'matplotlib', 'array_api_compat'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_listing_engines_imports_no_framework() -> None:
    code = (
        "import sys, gradlab\n"
        "gradlab.available_engines(); gradlab.get_engine('numpy'); gradlab.get_engine('fd')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jax')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_matches_the_installed_metadata() -> None:
    from importlib.metadata import version

    assert gradlab.__version__ == version("gradlab")
