"""The benchmark harness's own logic: what it times, when it reads the clock, what it reports.

No assertion here is about how fast anything is (speed is measured in ``benchmarks/``).
Fake engines make the logic observable: one that sleeps on its first call only (compile
time must stay out of the steady state), one whose work happens in ``block`` (the clock
must be read after the sync), one that counts its syncs.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from _helpers import RequiredMembersOnly, require_engine

import gradlab
from gradlab.bench._harness import MIN_SAMPLES, seconds, time_calls

FAST: dict[str, Any] = {"min_time": 0.01, "fit_steps": 10}


class FirstCallSleeps(gradlab.engines.NumpyEngine):
    """The numpy engine, but the first call of each function sleeps: a stand-in for a JIT."""

    name = "first-call-sleeps"
    COMPILE = 0.2

    def _slow_first(self, function: Any) -> Any:
        calls: list[int] = []

        def wrapped(*args: Any) -> Any:
            if not calls:
                time.sleep(self.COMPILE)
            calls.append(1)
            return function(*args)

        return wrapped

    def objective(self, problem: Any) -> Any:
        return self._slow_first(super().objective(problem))

    def value_and_grad(self, problem: Any) -> Any:
        return self._slow_first(super().value_and_grad(problem))


class WorkInBlock(gradlab.engines.NumpyEngine):
    """Calls return at once; the work (a sleep) happens when the result is waited for."""

    name = "work-in-block"
    WORK = 0.003

    def block(self, tree: Any) -> Any:
        time.sleep(self.WORK)
        return tree


class CountsSyncs(gradlab.engines.NumpyEngine):
    """Counts every call of the functions it builds and every ``block``."""

    name = "counts-syncs"

    def __init__(self) -> None:
        self.calls = 0
        self.blocks: list[Any] = []

    def _counted(self, function: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            self.calls += 1
            return function(*args)

        return wrapped

    def objective(self, problem: Any) -> Any:
        return self._counted(super().objective(problem))

    def value_and_grad(self, problem: Any) -> Any:
        return self._counted(super().value_and_grad(problem))

    def block(self, tree: Any) -> Any:
        self.blocks.append(tree)
        return tree


@dataclass(frozen=True)
class NoHandGradient(gradlab.Quadratic):
    """The seed's model without its hand gradient: the numpy engine cannot run it."""

    name = "no_hand_gradient"
    has_hand_gradient = False

    def hand_value_and_grad(self, params: Any, data: Any) -> Any:
        return gradlab.AbstractProblem.hand_value_and_grad(self, params, data)


def test_first_call_is_reported_apart_and_kept_out_of_the_steady_state() -> None:
    result = gradlab.benchmark("quadratic", 100, engines=[FirstCallSleeps()], **FAST)
    (case,) = result.cases
    assert case.first_objective is not None
    assert case.first_objective >= FirstCallSleeps.COMPILE
    assert case.first_gradient is not None
    assert case.first_gradient >= FirstCallSleeps.COMPILE
    assert case.objective is not None
    assert case.gradient is not None
    # Had the first call been counted, the median of 5+ calls would be at least 0.2 / 5.
    assert case.objective.median < FirstCallSleeps.COMPILE / 10
    assert case.gradient.median < FirstCallSleeps.COMPILE / 10


def test_the_clock_is_read_after_the_sync() -> None:
    result = gradlab.benchmark("quadratic", 100, engines=[WorkInBlock()], **FAST)
    (case,) = result.cases
    assert case.objective is not None
    assert case.gradient is not None
    assert case.objective.min >= WorkInBlock.WORK
    assert case.gradient.min >= WorkInBlock.WORK


def test_every_timed_call_is_synchronised_on_its_own_result() -> None:
    engine = CountsSyncs()
    result = gradlab.benchmark("quadratic", 100, engines=[engine], **FAST)
    (case,) = result.cases
    assert case.objective is not None
    assert case.gradient is not None
    # Two first calls, then every steady-state call; the fits call the gradient too, but
    # through the loop, which syncs once at its end by bringing results to the host.
    timed = 2 + case.objective.samples + case.gradient.samples
    assert len(engine.blocks) == timed
    assert engine.calls >= timed
    assert isinstance(engine.blocks[0], np.generic)  # the objective's loss was waited for
    assert isinstance(engine.blocks[-1], tuple)  # the gradient's (loss, grads)


def test_time_calls_repeats_until_the_minimum_time_and_count() -> None:
    samples = time_calls(lambda: None, lambda out: out, 0.0)
    assert len(samples) == MIN_SAMPLES
    samples = time_calls(lambda: time.sleep(0.002), lambda out: out, 0.02)
    assert sum(samples) >= 0.02
    assert all(sample >= 0.002 for sample in samples)


def test_an_engine_with_only_the_required_members_is_benchmarked() -> None:
    result = gradlab.benchmark("quadratic", 100, engines=[RequiredMembersOnly()], **FAST)
    (case,) = result.cases
    assert case.status == "measured"
    assert case.objective is not None
    assert case.ratio is not None


def test_an_engine_that_cannot_run_a_problem_is_skipped_with_the_reason() -> None:
    result = gradlab.benchmark(NoHandGradient(), 100, engines="numpy,fd", **FAST)
    numpy_case, fd_case = result.cases
    assert numpy_case.status == "skipped"
    assert "hand-derived gradient" in numpy_case.note
    assert fd_case.status == "measured"
    assert "skipped" in str(result)


def test_the_time_budget_stops_new_cases_cleanly() -> None:
    FirstCallSleeps.COMPILE = 0.2
    result = gradlab.benchmark(
        "quadratic", [100, 200, 300], engines=[FirstCallSleeps()], budget=0.1, **FAST
    )
    assert result.truncated
    statuses = [case.status for case in result.cases]
    assert statuses[-1] == "over budget"
    assert statuses.count("measured") <= 1
    assert len(result.cases) == 3
    assert "time budget ran out" in str(result)


def test_the_time_budget_bounds_the_wall_time_not_only_the_start_of_cases() -> None:
    """Each case would measure for 3 s, twice, plus its fits: with a budget of 0.5 s the
    whole benchmark ends within about one call of it, and says what it cut short."""
    began = time.perf_counter()
    result = gradlab.benchmark(
        "quadratic", [50, 60], engines="numpy,fd", min_time=3.0, fit_steps=10, budget=0.5
    )
    took = time.perf_counter() - began
    assert took < 0.5 + 2.0, took  # unbounded, the first case alone takes over 6 s
    assert result.truncated
    first = result.cases[0]
    assert first.status == "measured"
    assert first.note == "cut short by the time budget"
    assert first.gradient is not None
    assert first.gradient.samples >= 1
    assert [case.status for case in result.cases[1:]] == ["over budget"] * 3


def test_timings_that_spread_like_noise_are_flagged_with_what_to_do() -> None:
    """torch with contending threads: min 1.84 ms, median 153 ms. Such a timing says
    nothing about the engine, and the table must say so."""
    result = gradlab.benchmark("quadratic", [50, 60], engines="numpy", **FAST)
    steady = gradlab.Timing(min=1e-3, median=1.1e-3, samples=9)
    quiet, other = (
        dataclasses.replace(case, objective=steady, gradient=steady, fit_per_step=steady)
        for case in result.cases
    )
    noisy = dataclasses.replace(
        other, gradient=gradlab.Timing(min=1.84e-3, median=0.153, samples=9)
    )
    result = dataclasses.replace(result, cases=[quiet, noisy])
    assert result.noisy == [noisy]
    text = str(result)
    assert "153 ms !" in text
    assert "warning: timings marked ! are noise" in text
    assert "numpy quadratic n=60" in text
    assert "OMP_NUM_THREADS=1" in text
    assert "warning" in result.to_markdown()
    calm = dataclasses.replace(result, cases=[quiet])
    assert calm.noisy == []
    assert "warning" not in str(calm)


def test_the_floor_is_one_dot_product_over_the_same_data() -> None:
    result = gradlab.benchmark(
        ["quadratic", "linear_regression"], 1000, engines="numpy", dtypes="float32,float64", **FAST
    )
    for case in result.cases:
        assert case.floor is not None
        assert case.floor.samples >= MIN_SAMPLES
        assert case.floor_ratio == pytest.approx(case.gradient.min / case.floor.min)  # type: ignore[union-attr]
        width = 1 if case.problem == "quadratic" else 3  # x is (n,) or (n, 3), plus y
        assert case.data_bytes == 1000 * (width + 1) * np.dtype(case.dtype).itemsize


def test_results_as_table_json_frame_markdown_and_plot(tmp_path: Any) -> None:
    result = gradlab.benchmark(
        "quadratic,logistic_regression", [100, 300], engines="numpy,fd", **FAST
    )
    assert len(result.cases) == 8
    text = str(result)
    assert "grad/obj" in text
    assert "fd" in text
    record = json.loads(result.to_json())
    assert len(record["cases"]) == 8
    assert record["cases"][0]["gradient"]["samples"] >= MIN_SAMPLES
    assert record["provenance"]["engines"]["numpy"]["device"] == "cpu"
    assert record["provenance"]["numpy"] == np.__version__
    markdown = result.to_markdown()
    assert "Machine:" in markdown
    assert markdown.count("\n| quadratic |") == 4
    frame = pytest.importorskip("pandas") and result.to_frame()
    assert len(frame) == 8
    assert {"gradient_min", "gradient_median", "ratio", "first_gradient"} <= set(frame.columns)
    pytest.importorskip("matplotlib")
    figure = result.plot(tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert [ax.get_title() for ax in figure.axes] == [
        "logistic_regression, float64",
        "quadratic, float64",
    ]
    assert figure.axes[0].get_xscale() == "log"
    assert figure.axes[0].get_yscale() == "log"


def test_saved_results_load_back_and_bad_records_are_refused() -> None:
    result = gradlab.benchmark("quadratic", 100, engines="numpy,fd", **FAST)
    again = gradlab.BenchmarkResult.from_json(result.to_json())
    assert again.cases == result.cases
    assert str(again) == str(result)
    with pytest.raises(gradlab.ArgumentError, match="record"):
        gradlab.BenchmarkResult.from_dict({"cases": [{"problem": "q"}]})
    with pytest.raises(gradlab.ArgumentError, match="text"):
        gradlab.BenchmarkResult.from_json("{not json")


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [
        ({"sizes": [0]}, "sizes"),
        ({"sizes": []}, "sizes"),
        ({"dtypes": "float16"}, "dtypes"),
        ({"min_time": -1.0}, "min_time"),
        ({"budget": 0.0}, "budget"),
        ({"fit_steps": 0}, "fit_steps"),
        ({"problems": "quadratc"}, "problems"),
        ({"problems": gradlab.Problem(lambda p, d, xp: p["a"] ** 2)}, "problems"),
        ({"engines": "numpy,numpy"}, "engines"),
        ({"memory": "yes"}, "memory"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    arguments: dict[str, Any], argument: str
) -> None:
    with pytest.raises(gradlab.GradlabError, match=argument):
        gradlab.benchmark(**{"problems": "quadratic", "sizes": 100, **FAST, **arguments})


def test_an_unknown_problem_name_gets_a_suggestion() -> None:
    with pytest.raises(gradlab.ArgumentError, match="did you mean 'quadratic'"):
        gradlab.benchmark("quadratc", 100)


def test_seconds_keep_three_significant_digits() -> None:
    assert [seconds(v) for v in (2.5, 0.0123, 4.56e-5, 7e-9, None)] == [
        "2.5 s",
        "12.3 ms",
        "45.6 µs",
        "7 ns",
        "—",
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read on Linux")
def test_peak_memory_sees_the_data_copies_and_does_not_grow_with_steps() -> None:
    n = 200_000
    result = gradlab.benchmark("quadratic", n, engines="numpy", memory=True, **FAST)
    (case,) = result.cases
    assert case.peak_memory is not None
    assert case.peak_memory_4x_steps is not None
    # The numpy engine reads the data in place (a float64 fit copies nothing), but the fit
    # holds x² (Quadratic's constant) and each step's residual, n floats each: the peak
    # sees them, and no copy of the data beyond.
    assert case.data_bytes == 2 * n * 8
    assert n * 8 <= case.peak_memory <= 2 * case.data_bytes
    # Nothing per step: four times the steps, about the same peak (not four times).
    assert case.peak_memory_4x_steps < 1.5 * case.peak_memory


def test_the_bench_command_writes_json_and_markdown(tmp_path: Any) -> None:
    stem = tmp_path / "bench"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradlab",
            "bench",
            "--problems",
            "quadratic",
            "--sizes",
            "100,200",
            "--engines",
            "numpy",
            "--min-time",
            "0.01",
            "--fit-steps",
            "10",
            "--out",
            str(stem),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["cases"]) == 2
    assert len(json.loads((tmp_path / "bench.json").read_text())["cases"]) == 2
    assert "| quadratic | 200 | float64 | numpy |" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize(
    "options", [["--sizes", "1,a"], ["--sizes", "0"], ["--fit-steps", "0"], ["--dtypes", "f16"]]
)
def test_the_bench_command_refuses_bad_options(options: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradlab", "bench", "--engines", "numpy", *options],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "error" in done.stderr


def test_torch_block_waits_for_a_cuda_device(monkeypatch: Any) -> None:
    require_engine("torch")
    import torch

    engine: Any = gradlab.get_engine("torch")  # block is optional in the protocol
    synced: list[Any] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    tree = object()
    assert engine.block(tree) is tree
    assert synced == []  # the CPU computes synchronously: nothing to wait for
    monkeypatch.setattr(engine, "device", torch.device("cuda", 0))
    assert engine.block(tree) is tree
    assert synced == [torch.device("cuda", 0)]


def test_jax_block_waits_until_ready(monkeypatch: Any) -> None:
    require_engine("jax")
    import jax

    engine: Any = gradlab.get_engine("jax")  # block is optional in the protocol
    waited: list[Any] = []

    def block_until_ready(tree: Any) -> Any:
        waited.append(tree)
        return tree

    monkeypatch.setattr(jax, "block_until_ready", block_until_ready)
    tree = {"a": 1}
    assert engine.block(tree) is tree
    assert waited == [tree]
