"""The command line, run as a user runs it: in a subprocess, reading its output and status."""

from __future__ import annotations

import subprocess
import sys

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
    for engine in gradlab.available_engines():
        assert f"\n{engine.rjust(6)}  " in table or f"\n{engine} " in table, engine
    # The seed's NumPy run lands at a w and b the table must show (9 decimals).
    reference = recipes.seed_numpy().run("numpy")
    assert f"{float(reference.params['w']):.9f}" in table
    assert f"{float(reference.params['b']):.9f}" in table
    assert "All" in table
    assert "agree" in table


def test_demo_can_run_the_torch_recipe_on_chosen_engines() -> None:
    out = gradlab_cli("demo", "--recipe", "torch", "--engines", "numpy,fd")
    if "torch" not in gradlab.available_engines():
        assert out.returncode == 2
        assert "gradlab[torch]" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert "float32" in out.stdout


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
