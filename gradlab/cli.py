"""The ``gradlab`` command line: ``demo``, ``compare``, ``fit`` and ``bench``.

Exit status: 0 success (engines agree; the fit completed), 1 a finding (an engine disagrees;
the fit diverged), 2 a usage error (bad option, unknown engine, unwritable --plot path...).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradlab import optimizers, recipes
from gradlab._boundary import physical_memory
from gradlab._errors import ArgumentError, GradlabError, NotSupported, ProblemError
from gradlab._files import FORMATS, match, read_arrays
from gradlab._output import (
    check_image_path,
    check_writable,
    load,
    optional,
    save_figure,
    to_json,
)
from gradlab._tree import canonical_path, flatten
from gradlab.comparison._kinds import GRADIENT, HESSIAN, ON_COMMAND_LINE, kind_named
from gradlab.comparison._report import GradientReport
from gradlab.engines._registry import engine_list, installed_opt_in
from gradlab.fitting._result import FitResult
from gradlab.problems import AbstractProblem
from gradlab.problems._named import NAMED_PROBLEMS, at_size, problem_named

_RECIPES = {
    "numpy": recipes.seed_numpy,
    "torch": recipes.seed_torch,
    "mlp-frameworks": recipes.mlp_frameworks,
}
_PROBLEMS = NAMED_PROBLEMS
_OPTIMIZERS = {
    "sgd": optimizers.sgd,
    "momentum": optimizers.momentum,
    "adam": optimizers.adam,
    "adamw": optimizers.adamw,
    "rmsprop": optimizers.rmsprop,
}


def _tolerance(text: str) -> float | str:
    """--tolerance: a number, or ``derived``."""
    if text == "derived":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'derived', got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradlab",
        description="Compare gradient engines: do they agree, and how fast are they?",
        epilog="Run 'gradlab COMMAND --help' for a command's options. Exit status: 0 success, "
        "1 disagreement or divergence, 2 usage error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--plot", metavar="FILE", help="also draw the result to FILE (.png, .pdf, .svg)"
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    machine = argparse.ArgumentParser(add_help=False)
    machine.add_argument("--json", action="store_true", help="print JSON instead of a table")
    against = argparse.ArgumentParser(add_help=False)
    against.add_argument(
        "--baseline",
        metavar="FILE",
        default=None,
        help="also compare the result with the same run saved earlier as JSON (--json > FILE): "
        "exit status 1 if any engine's numbers changed beyond tolerance or it no longer runs",
    )
    setup = argparse.ArgumentParser(add_help=False)
    setup.add_argument(
        "--problem",
        default="quadratic",
        help=(
            f"the problem: one of {', '.join(_PROBLEMS)} (default quadratic, the seed's "
            "model), or your own as package.module:attribute or path/to/file.py:attribute "
            "(a problem, or a function returning one, with make_data(n, seed=...))"
        ),
    )
    setup.add_argument(
        "--n",
        type=int,
        default=100,
        help="number of data points; of variables for rosenbrock and log_sum_exp (default 100)",
    )
    setup.add_argument(
        "--features",
        type=int,
        default=3,
        help="features d of the problems that have them (default 3)",
    )
    setup.add_argument(
        "--data",
        nargs="+",
        metavar="FILE",
        default=None,
        help="your data instead of generated data (--n and --features then unused): "
        ".npz, .pt or .safetensors files of arrays by name, or NAME=FILE for a one-array "
        "file such as .npy (x=x.npy y=y.npy)",
    )
    setup.add_argument("--seed", type=int, default=0, help="seed of the generated data (default 0)")
    setup.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float64",
        help="precision every engine computes in (default float64)",
    )

    demo = commands.add_parser(
        "demo",
        parents=[output],
        help="fit the seed tutorial's model on every installed engine (opt-in ones when named)",
        description=(
            "Fit y = w·x² + b as the seed tutorial does (lr 0.001, 800 steps, from the same "
            "start) on every installed engine but the opt-in ones (torch-compile, mlx, ...: "
            "name them in --engines); print each engine's result, time per step and "
            "largest gradient disagreement with the hand-derived gradient. Exit status 0 when "
            "every engine agrees, 1 otherwise."
        ),
    )
    demo.add_argument(
        "--recipe",
        choices=sorted(_RECIPES),
        default="numpy",
        help=(
            "which recipe: the seed's runs, numpy (float64, default) or torch (float32); or "
            "mlp-frameworks, one MLP classifier written in torch, JAX and NumPy, whose "
            "gradients, Hessian-vector products and 200-step Adam fits are compared"
        ),
    )
    demo.add_argument(
        "--engines",
        default=None,
        help="comma-separated engine names (default: every installed engine but the opt-in ones)",
    )
    demo.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per engine after one warm-up; the fastest is shown (default 3)",
    )

    compare = commands.add_parser(
        "compare",
        parents=[setup, output, machine, against],
        help="compare every engine's gradient (or, with --kind, Hessian or Jacobian) at one point",
        description=(
            "Take every engine's gradient (or, with --kind, another derivative) at the same "
            "parameters and compare them pairwise in "
            "rho = |a−b| / max(1, |a|+|b|), with a verdict per engine against the reference. "
            "Exit status 0 when all agree, 1 when an engine disagrees beyond tolerance (or, "
            "with --baseline, when a result changed since the baseline)."
        ),
    )
    compare.add_argument(
        "--engines",
        default=None,
        help="comma-separated engine names (default: every installed engine but the opt-in ones)",
    )
    compare.add_argument(
        "--reference",
        default=None,
        help="engine the verdicts are against (default numpy, the hand derivation)",
    )
    compare.add_argument(
        "--params",
        nargs="+",
        metavar="NAME=VALUES",
        default=[],
        help="where to compare: a file of every parameter by name (.npz, .pt, "
        ".safetensors), and/or NAME=VALUES words, e.g. --params w=1.5 b=-2 (vectors: "
        "w=1,2,3); the rest from the problem's initial_params (with --seed)",
    )
    compare.add_argument(
        "--kind",
        default=GRADIENT.option,
        metavar="KIND",
        help=f"what to compare: {' | '.join(ON_COMMAND_LINE)} (default {GRADIENT.option}), "
        "or fit: the same fit on every engine from the problem's initial_params (or --params), "
        "paths compared step by step (--steps, --lr, --optimizer, --envelope)",
    )
    compare.add_argument(
        "--hessian",
        dest="kind",
        action="store_const",
        const=HESSIAN.option,
        help="compare full Hessians (second derivatives): the same as --kind hessian",
    )
    compare.add_argument(
        "--tolerance",
        type=_tolerance,
        default=None,
        help="one largest rho for every pair, instead of gradlab's table; or 'derived': "
        "each pair's from the computation (what a few ulps' move of the parameters does)",
    )
    compare.add_argument(
        "--atol",
        type=float,
        default=None,
        help="judge pairs by |a-b| <= atol + rtol*max(|a|,|b|) instead of rho",
    )
    compare.add_argument("--rtol", type=float, default=None, help="see --atol")
    fits = compare.add_argument_group("with --kind fit")
    fits.add_argument(
        "--optimizer", choices=sorted(_OPTIMIZERS), default="sgd", help="(default sgd)"
    )
    fits.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 0.001)")
    fits.add_argument("--steps", type=int, default=800, help="steps per fit (default 800)")
    fits.add_argument(
        "--envelope",
        type=int,
        default=None,
        metavar="K",
        help="judge each path step by step against its natural drift, measured by K more "
        "runs of each engine's fit from a start and data moved by a few ulps",
    )

    locate = commands.add_parser(
        "locate",
        parents=[setup, output, machine],
        help="find where implementations part: the first tapped point, forward or backward",
        description=(
            "Evaluate the problem on each engine with its points watched (gradlab.tap in "
            "the code; every submodule of a torch module wrapped by gradlab.torch_module), "
            "and report every point's forward value and backward cotangent against the "
            "reference, each judged against the bound round-off explains there. Exit status "
            "0 when no engine parts from the reference beyond it, 1 when one does."
        ),
    )
    locate.add_argument(
        "--engines",
        default=None,
        help="comma-separated engine names, the reference first (default: one engine per "
        "framework the problem is implemented in)",
    )
    locate.add_argument(
        "--params",
        nargs="+",
        metavar="NAME=VALUES",
        default=[],
        help="where to evaluate, e.g. --params w=1.5 b=-2; the rest from the problem's "
        "initial_params",
    )

    audit = commands.add_parser(
        "audit",
        parents=[setup, machine],
        help="is one engine stable? its gradient and a short fit under reruns, threads, ...",
        description=(
            "Run one engine's gradient and a short fit plainly, then under each variation: "
            "the same calls again, one thread in a new process, eager against compiled, "
            "the gradient accumulated over mini-batches, a GPU, the other precision; report "
            "per variation and per quantity whether they came out bitwise equal, or how many "
            "ulps apart. Exit status 0 when a rerun is bitwise equal, 1 when it is not."
        ),
    )
    audit.add_argument("--engine", default="numpy", help="the engine (default numpy)")
    audit.add_argument(
        "--variations",
        default=None,
        help="comma-separated, from rerun, threads, compiled, accumulation, device, "
        "precision (default all)",
    )
    audit.add_argument(
        "--steps", type=int, default=20, help="steps of the short fit; 0 for none (default 20)"
    )
    audit.add_argument(
        "--lr", type=float, default=1e-3, help="the fit's sgd learning rate (default 0.001)"
    )
    audit.add_argument(
        "--batches", type=int, default=4, help="mini-batches for accumulation (default 4)"
    )
    audit.add_argument(
        "--params",
        nargs="+",
        metavar="NAME=VALUES",
        default=[],
        help="where to take the gradient and start the fit, e.g. --params w=1.5 b=-2; the "
        "rest from the problem's initial_params",
    )
    audit.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    fit = commands.add_parser(
        "fit",
        parents=[setup, output, machine, against],
        help="fit a problem on one engine",
        description="Minimise a problem by gradient descent on one engine. Exit status 0 when "
        "the fit completed, 1 when it diverged (or, with --baseline, when its path changed "
        "since the baseline).",
    )
    fit.add_argument("--engine", default="numpy", help="the engine (default numpy)")
    fit.add_argument(
        "--optimizer",
        choices=sorted(_OPTIMIZERS),
        default="sgd",
        help="the optimizer (default sgd)",
    )
    fit.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 0.001)")
    fit.add_argument("--steps", type=int, default=800, help="number of steps (default 800)")
    fit.add_argument(
        "--init",
        "--params",
        dest="init",
        nargs="+",
        metavar="NAME=VALUES",
        default=[],
        help="starting point: a file of every parameter by name (.npz, .pt, .safetensors) "
        "and/or NAME=VALUES words, e.g. --init w=0 b=0 (default: the problem's "
        "initial_params)",
    )
    fit.add_argument(
        "--show-params",
        action="store_true",
        help="print every final parameter array (by default, those of a model of at most "
        f"{_SHOWN} numbers; a larger model's are summarised)",
    )
    fit.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="mini-batches of this many rows, shuffled each epoch from --seed (default: all)",
    )
    fit.add_argument(
        "--stop-loss", type=float, default=None, help="stop once the loss is at most this"
    )
    fit.add_argument(
        "--stop-grad-norm",
        type=float,
        default=None,
        help="stop once the gradient's norm is at most this",
    )
    fit.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many steps without the loss improving",
    )
    bench = commands.add_parser(
        "bench",
        parents=[output, machine],
        help="time every engine: first call, objective, gradient, fit per step",
        description=(
            "Time every engine on every problem, size and dtype, in this process: the first "
            "call (compilation) apart, then the objective and value-and-gradient repeated "
            "(each call synchronised) for --min-time seconds, min and median; their ratio; "
            "one numpy.dot over the data (the memory floor); and gradlab.fit per step."
        ),
    )
    bench.add_argument(
        "--problems",
        default=",".join(_PROBLEMS),
        help="comma-separated problems (default: all built-in)",
    )
    bench.add_argument(
        "--sizes", default="100,1000,10000", help="comma-separated n (default 100,1000,10000)"
    )
    bench.add_argument(
        "--data",
        nargs="+",
        metavar="FILE",
        default=None,
        help="time on your data instead (--sizes then unused; one --problems): .npz, .pt or "
        ".safetensors files, or NAME=FILE for a one-array file",
    )
    bench.add_argument(
        "--params",
        nargs="+",
        metavar="FILE",
        default=[],
        help="the point to time at: a file of every parameter by name, and/or NAME=VALUES "
        "(needs one --problems; default: near the problem's initial_params)",
    )
    bench.add_argument(
        "--engines",
        default=None,
        help="comma-separated engines, e.g. numpy,torch,jax,torch-compile "
        "(default: every installed engine but torch-compile)",
    )
    bench.add_argument(
        "--dtypes", default="float64", help="float32, float64 or both (default float64)"
    )
    bench.add_argument(
        "--min-time", type=float, default=0.2, help="seconds of timing per figure (default 0.2)"
    )
    bench.add_argument(
        "--fit-steps", type=int, default=100, help="most steps per timed fit (default 100)"
    )
    bench.add_argument(
        "--memory",
        action="store_true",
        help="also measure each fit's peak memory (a fresh process per case; Linux)",
    )
    bench.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds after which no new case starts (default: no limit)",
    )
    bench.add_argument(
        "--out",
        metavar="STEM",
        default=None,
        help="also write STEM.json and STEM.md (the table, with the machine described)",
    )
    engines = commands.add_parser(
        "engines",
        parents=[machine],
        help="list every known engine: installed, version, device, capabilities",
        description=(
            "List every engine gradlab knows, installed or not: the framework's version, the "
            "device it computes on, what it can do (gradient, Hessian-vector products, "
            "Jacobians, forward mode, vectorised per-example gradients, a compiled loop), "
            "whether comparisons use it by default, and how to install a missing one."
        ),
    )
    engines.add_argument(
        "--no-load",
        action="store_true",
        help="do not import the frameworks (fast; the device column stays empty)",
    )
    gradbench = commands.add_parser(
        "gradbench",
        help="run an engine as a GradBench tool (JSON lines on stdin and stdout)",
        description=(
            "Answer GradBench's protocol on standard input and output with one gradlab "
            "engine: give GradBench `--tool 'gradlab gradbench --engine jax'`. Implements the "
            "evals hello, lse, llsq, gmm, kmeans, det, ode and lstm."
        ),
    )
    gradbench.add_argument("--engine", required=True, help="the engine that computes")
    return parser


def _gradbench(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab.gradbench import serve

    return serve(args.engine)


def _engines(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab.engines._listing import engine_info

    listing = engine_info(load=not args.no_load)
    if args.json:
        _emit(json.dumps([info.to_dict() for info in listing], indent=2))
        return 0
    short = {"forward mode": "forward", "compiled loop": "compiled"}
    rows = [("engine", "installed", "version", "device", "can do", "note")]
    for info in listing:
        can = [short.get(name, name) for name, has in info.capabilities.items() if has]
        note = "default" if info.default else "opt-in: name it"
        if info.install:
            note = info.install
        elif info.error:
            note = f"error: {info.error}"
        rows.append(
            (
                info.name,
                "yes" if info.installed else "no",
                info.version or "",
                info.device or "",
                ", ".join(can) or ("?" if info.installed else ""),
                note,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for index, row in enumerate(rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
        if index == 0:
            print("  ".join("-" * width for width in widths) + "  " + "-" * 4)
    return 0


def _bench(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab.bench._harness import benchmark

    if args.out is not None:
        check_output_stem(args.out)
    try:
        sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    except ValueError:
        raise ArgumentError(
            "--sizes", f"must be comma-separated integers, got {args.sizes!r}"
        ) from None
    data, params = None, None
    if args.data is not None or args.params:
        names = [name for name in args.problems.split(",") if name.strip()]
        if len(names) != 1:
            flag = "--data" if args.data is not None else "--params"
            raise ArgumentError(flag, f"is for one problem; --problems names {len(names)}")
        problem = problem_named(names[0], "--problems")
        if args.data is not None:
            data = read_arrays(args.data, "--data")
        if args.params:
            # Shapes from the data timed on: yours, or the problem's at the first size.
            shaped = data if data is not None else at_size(problem, sizes[0]).make_data(sizes[0])
            params = _point(problem, shaped, args.params, "--params", 0)
    result = benchmark(
        args.problems,
        sizes,
        engines=args.engines,
        dtypes=args.dtypes,
        min_time=args.min_time,
        fit_steps=args.fit_steps,
        memory=args.memory,
        budget=args.budget,
        progress=show_progress,
        data=data,
        params=params,
    )
    if args.json:
        _emit(to_json(result.to_dict()))
    else:
        print(result)
    if args.out is not None:
        with open(f"{args.out}.json", "w", encoding="utf-8") as file:
            file.write(result.to_json() + "\n")
        with open(f"{args.out}.md", "w", encoding="utf-8") as file:
            file.write(result.to_markdown())
        if not args.json:
            print(f"\nResults written to {args.out}.json and {args.out}.md")
    if args.plot:
        save_figure(result.plot(), args.plot)
        if not args.json:
            print(f"Plot written to {args.plot}")
    return 0


def check_output_stem(stem: str) -> None:
    """Refuse an --out whose files cannot be written, before any work."""
    if not stem or os.path.basename(stem) in ("", ".", ".."):
        raise ArgumentError("--out", f"must name a file stem (STEM.json, STEM.md), got {stem!r}")
    for suffix in (".json", ".md"):
        check_writable(f"{stem}{suffix}", "--out")


def _demo(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab._demo import format_table, run_demo, run_frameworks_demo

    recipe = _RECIPES[args.recipe]()
    if args.recipe == "mlp-frameworks":
        return run_frameworks_demo(recipe, args.engines, args.repeats, show_progress, args.plot)
    engines, default = engine_list(args.engines, "--engines", installed_only=True)
    names = [str(name) for name in engines]
    rows = run_demo(recipe, names, args.repeats, show_progress)
    print(
        f"Seed recipe {recipe.name!r}: {recipe.problem.name}, {recipe.steps} steps, "
        f"{recipe.dtype}, same start on every engine (time per step: fastest of "
        f"{args.repeats} runs after a warm-up)"
    )
    print(f"{_running(names, default)}\n")
    print(format_table(recipe, rows))
    if args.plot:
        from gradlab.plots import fit_figure

        results = {
            row.result.engine: recipe.run(row.result.engine, trajectory=True) for row in rows
        }
        save_figure(fit_figure(results, model=recipe.problem, data=recipe.data), args.plot)
        print(f"\nPlot written to {args.plot}")
    disagree = [row.result.engine for row in rows if not row.agrees]
    if disagree:
        print(f"\nDisagreement beyond tolerance: {', '.join(disagree)}")
        return 1
    print(f"\nAll {len(rows)} engines agree with the hand-derived gradient.")
    return 0


def _running(names: list[str], default: bool) -> str:
    """Which engines a command runs, and, for the default set, the installed ones it leaves
    out and how to run them."""
    line = f"Engines: {', '.join(names)}"
    if not default:
        return line
    left_out = installed_opt_in()
    line += " (the default set: every installed engine but the opt-in ones"
    if left_out:
        return f"{line}; installed, opt-in: {', '.join(left_out)}, run when named in --engines)"
    return line + ")"


def _problem_and_data(args: argparse.Namespace) -> tuple[AbstractProblem, dict[str, np.ndarray]]:
    """The named problem and its data: the --data files where given, else the problem's
    own: --n points (parameters, for rosenbrock and log_sum_exp, which take no data) and
    --features where the problem has features."""
    if args.data is not None:
        problem = problem_named(args.problem, "--problem")
        data = read_arrays(args.data, "--data")
        args.data_names = sorted(data)
        return problem, data
    memory = physical_memory()
    needed = 8 * args.n * (args.features + 2) * 4  # x, y and a few working copies, float64
    if memory is not None and needed > memory:
        raise ArgumentError(
            "--n",
            f"is {args.n}: its data and working copies need about {needed / 2**30:.3g} GiB, "
            f"more than this machine's {memory / 2**30:.3g} GiB",
        )
    problem = at_size(problem_named(args.problem, "--problem"), args.n)
    try:
        return problem, _made(problem, args)
    except NotSupported:
        # A problem that makes no data: it closes over its own, or reads none. Where its
        # loss reads an array after all, the error says to give it with --data.
        args.made_no_data = True
        return problem, {}


def _made(problem: AbstractProblem, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The problem's own data for --n, --features and --seed (``NotSupported`` when it
    makes none)."""
    if problem.takes_features:
        return problem.make_data(args.n, d=args.features, seed=args.seed)  # type: ignore[call-arg]
    return problem.make_data(args.n, seed=args.seed)


def _point(
    problem: AbstractProblem,
    data: dict[str, np.ndarray],
    given: Sequence[str],
    option: str,
    seed: int,
) -> Any:
    """Parameters from ``FILE`` words (every parameter by name: ``.npz``, ``.pt``,
    ``.safetensors``) and NAME=VALUES words (NAME a path, ``layers[0].w``), later words
    winning; the rest from the problem's ``initial_params(data, seed=seed)``, in its
    structure."""
    try:
        start, layout = flatten(problem.initial_params(data, seed=seed))
    except NotSupported as error:
        files = [word for word in given if _is_file(word)]
        if not files:
            raise ArgumentError(
                "--problem",
                f"{error}; for the command line, a problem declares its parameters "
                f"(Problem(params=...)) or has initial_params(data, seed=...), or {option} "
                "gives a file of them all",
            ) from None
        # No shapes declared: the files' parameters, as they name them, are the point.
        arrays = read_arrays(files, option)
        start, layout = flatten({name: value.astype(np.float64) for name, value in arrays.items()})
    shapes = {name: np.shape(value) for name, value in start.items()}
    point = dict(start)
    for word in given:
        if _is_file(word):
            point.update(_params_file(problem, word, shapes, option))
            continue
        name, sep, values = word.partition("=")
        if not sep or not name:
            raise ArgumentError(
                option, f"expected a file (.npz, .pt, .safetensors) or NAME=VALUES, got {word!r}"
            )
        # A path in another spelling (embed['kernel']) names the same parameter; what is
        # not a path is named below as no parameter of the problem.
        with contextlib.suppress(ValueError):
            name = canonical_path(name)
        if name not in shapes:
            bracketed = f"[{name!r}]"
            hint = (
                f" (a name with dots is written in brackets: {bracketed}=...)"
                if bracketed in shapes
                else ""
            )
            raise ArgumentError(
                option,
                f"{problem.name} has no parameter {name!r}; it has {', '.join(shapes)}{hint}",
            )
        try:
            numbers = np.array([float(v) for v in values.split(",")])
        except ValueError:
            raise ArgumentError(option, f"{word!r}: values must be numbers") from None
        shape = shapes[name]
        if numbers.size != np.prod(shape):
            raise ArgumentError(
                option,
                f"{name} got {numbers.size} value(s), but {problem.name}'s {name} has shape "
                f"{shape} here ({int(np.prod(shape))} value(s))",
            )
        point[name] = numbers.reshape(shape)
    return layout.unflatten(point)


def _is_file(word: str) -> bool:
    """Whether a --params word names a file (by its suffix), not NAME=VALUES."""
    return os.path.splitext(word)[1].lower() in FORMATS and "=" not in word


def _params_file(
    problem: AbstractProblem, word: str, shapes: dict[str, tuple[int, ...]], option: str
) -> dict[str, np.ndarray]:
    """Every parameter from one file, by path, each of the problem's shape.

    A file must hold them all: a checkpoint that lacks one is the wrong checkpoint, and a
    parameter filled in silently from the default would give numbers nobody asked for.
    """
    arrays = read_arrays([word], option)
    found: dict[str, np.ndarray] = {}
    unknown = []
    for name, value in arrays.items():
        matched = match(name, list(shapes))
        if matched is None:
            unknown.append(name)
            continue
        if value.shape != shapes[matched]:
            raise ArgumentError(
                option,
                f"{word}: {name!r} has shape {value.shape}, but {problem.name}'s {matched} has "
                f"shape {shapes[matched]} here",
            )
        found[matched] = value.astype(np.float64)
    missing = [name for name in shapes if name not in found]
    if unknown or missing:
        parts = [
            f"has {', '.join(map(repr, unknown))}, not {problem.name}'s" if unknown else "",
            f"lacks {', '.join(missing)}" if missing else "",
        ]
        raise ArgumentError(
            option,
            f"{word} {' and '.join(p for p in parts if p)}; {problem.name}'s parameters are "
            f"{', '.join(shapes)}",
        )
    return found


def _compare(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab.comparison._kernel import compare

    if args.kind == "fit":
        return _compare_fits(args, show_progress)
    if args.envelope is not None:
        raise ArgumentError("--envelope", "judges fits: give it with --kind fit")
    # An unknown --kind is refused before the baseline and the data are read.
    kind = kind_named(args.kind, ON_COMMAND_LINE)
    baseline = _baseline(args, GradientReport)
    problem, data = _problem_and_data(args)
    params = _point(problem, data, args.params, "--params", args.seed)
    report = compare(
        kind,
        problem,
        data,
        params,
        engines=args.engines,
        dtype=args.dtype,
        reference=args.reference,
        tolerance=args.tolerance,
        atol=args.atol,
        rtol=args.rtol,
        progress=show_progress,
    )
    against = None if baseline is None else report.against(baseline)
    _print(report, against, args.json)
    if args.plot:
        report.plot(args.plot)
        if not args.json:
            print(f"\nPlot written to {args.plot}")
    return 0 if report.ok and (against is None or against.ok) else 1


def _compare_fits(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab.comparison._fits import FitComparison, compare_fits

    baseline = _baseline(args, FitComparison)
    problem, data = _problem_and_data(args)
    init = _point(problem, data, args.params, "--params", args.seed)
    comparison = compare_fits(
        problem,
        data,
        optimizer=_OPTIMIZERS[args.optimizer](args.lr),
        steps=args.steps,
        init=init,
        engines=args.engines,
        dtype=args.dtype,
        reference=args.reference,
        progress=show_progress,
        tolerance=args.tolerance,
        atol=args.atol,
        rtol=args.rtol,
        envelope=args.envelope,
    )
    against = None if baseline is None else comparison.against(baseline)
    _print(comparison, against, args.json)
    if args.plot:
        comparison.plot(args.plot)
        if not args.json:
            print(f"\nPlot written to {args.plot}")
    return 0 if comparison.ok and (against is None or against.ok) else 1


def _locate(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab.comparison._locate import locate

    problem, data = _problem_and_data(args)
    params = _point(problem, data, args.params, "--params", args.seed)
    report = locate(problem, data, params, engines=args.engines, dtype=args.dtype, seed=args.seed)
    _print(report, None, args.json)
    if args.plot:
        report.plot(args.plot)
        if not args.json:
            print(f"\nPlot written to {args.plot}")
    return 0 if report.ok else 1


def _audit(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab.comparison._audit import audit
    from gradlab.optimizers import sgd

    problem, data = _problem_and_data(args)
    params = _point(problem, data, args.params, "--params", args.seed)
    report = audit(
        problem,
        data,
        params,
        engine=args.engine,
        variations=args.variations,
        dtype=args.dtype,
        steps=args.steps,
        optimizer=sgd(args.lr),
        batches=args.batches,
        seed=args.seed,
    )
    _print(report, None, args.json)
    return 1 if report.deterministic is False else 0


def _baseline(args: argparse.Namespace, kind: type) -> Any:
    """The --baseline file, loaded before any work is done (``None`` without one)."""
    if args.baseline is None:
        return None
    return load(args.baseline, kind, "--baseline")


#: Where ``--json`` output goes: the real standard output. While a ``--json`` command runs,
#: ``sys.stdout`` is standard error, so that what a --problem's own code prints cannot
#: break the JSON a pipe reads.
_JSON_OUT: list[Any] = []


def _emit(text: str) -> None:
    """Write ``--json`` output to the real standard output."""
    print(text, file=_JSON_OUT[-1] if _JSON_OUT else sys.stdout)


def _print(
    result: Any,
    against: Any,
    as_json: bool,
    extra: dict[str, Any] | None = None,
    *,
    show_params: bool = False,
) -> None:
    """A result as its table or JSON, with its comparison against the baseline if any (in
    JSON under ``"against_baseline"``, so that the record still loads as the result)."""
    if as_json:
        record = {**result.to_dict(), **(extra or {})}
        if against is not None:
            record["against_baseline"] = against.to_dict()
        _emit(to_json(record))
        return
    print(result if extra is None else _describe_fit(result, extra, show_params))
    if against is not None:
        print(f"\n{against}")


def _fit(args: argparse.Namespace, show_progress: bool) -> int:
    from gradlab._progress import progress_bar
    from gradlab.fitting._fit import fit

    baseline = _baseline(args, FitResult)
    problem, data = _problem_and_data(args)
    # Zeros, unless the problem knows a better start (an MLP's units must differ).
    init = _point(problem, data, args.init, "--init", args.seed)
    optimizer = _OPTIMIZERS[args.optimizer](args.lr)
    with progress_bar(1, f"fit on {args.engine}", show_progress) as advance:
        result = fit(
            problem,
            data,
            engine=args.engine,
            optimizer=optimizer,
            steps=args.steps,
            init=init,
            dtype=args.dtype,
            trajectory=bool(args.plot) or baseline is not None,
            batch_size=args.batch_size,
            seed=args.seed,
            stop=_stop(args),
        )
        advance(args.engine)
    against = None if baseline is None else result.against(baseline)
    optimizer_facts = {"optimizer": {"name": args.optimizer, "lr": args.lr}}
    _print(result, against, args.json, optimizer_facts, show_params=args.show_params)
    if args.plot:
        from gradlab.plots import fit_figure

        save_figure(fit_figure({result.engine: result}, model=problem, data=data), args.plot)
        if not args.json:
            print(f"\nPlot written to {args.plot}")
    return 0 if result.ok and (against is None or against.ok) else 1


def _stop(args: argparse.Namespace) -> Any:
    """The fit's stop rules from --stop-loss, --stop-grad-norm and --patience, if any."""
    from gradlab.fitting._stop import Stop

    rules = {"loss": args.stop_loss, "grad_norm": args.stop_grad_norm, "patience": args.patience}
    if all(value is None for value in rules.values()):
        return None
    return Stop(**rules)  # a bad value names its flag through main's table


def _describe_fit(result: Any, extra: dict[str, Any], show_params: bool) -> str:
    where = f" at step {result.diverged_at}" if result.diverged_at is not None else ""
    optimizer = extra["optimizer"]
    lines = [
        f"Fit: {result.problem} on {result.engine}, {result.dtype}, {optimizer['name']} "
        f"(lr {optimizer['lr']:g}), {result.steps} steps",
        f"status:     {result.status}{where}"
        + ("" if result.stop_reason in ("steps", "diverged") else f" ({result.stop_reason})"),
        *_final_params(flatten(result.params)[0], show_params),
        f"final loss: {result.final_loss:.9g}",
        f"time:       {result.wall_time:.3g} s ({result.time_per_step * 1e6:.1f} µs/step, "
        "including any compilation)",
    ]
    return "\n".join(lines)


#: A model of at most this many numbers has its final parameters printed by ``gradlab
#: fit`` (the seed's w and b are its result); a larger one's are summarised.
_SHOWN = 12


def _final_params(params: dict[str, Any], show: bool) -> list[str]:
    """The fit's final parameters: each, for a small model or when asked; else one line."""
    from gradlab._output import short

    sizes = [int(np.size(value)) for value in params.values()]
    if show or sum(sizes) <= _SHOWN:
        return [
            f"final {name}:{' ' * max(1, 5 - len(name))}{short(value, 9)}"
            for name, value in params.items()
        ]
    norm = float(np.sqrt(sum(float(np.sum(np.square(value))) for value in params.values())))
    return [
        f"params:     {len(params)} arrays, {sum(sizes):,} numbers, norm {norm:.6g} "
        "(--show-params prints them; --json gives them all)"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 a finding, 2 usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        # Refuse what would fail at the end before any work is done.
        if getattr(args, "plot", None) is not None:
            check_image_path(args.plot, "--plot")
            optional("matplotlib", "--plot", "plot")
        for option in ("n", "features", "steps", "repeats", "fit_steps"):
            # An audit's fit may be left out (--steps 0); the library names a negative one.
            if getattr(args, option, 1) < 1 and (args.command, option) != ("audit", "steps"):
                raise ArgumentError(
                    f"--{option.replace('_', '-')}",
                    f"must be a positive integer, got {getattr(args, option)}",
                )
        show_progress = not getattr(args, "quiet", True) and sys.stderr.isatty()
        command = {
            "demo": _demo,
            "compare": _compare,
            "locate": _locate,
            "audit": _audit,
            "fit": _fit,
            "bench": _bench,
            "engines": _engines,
            "gradbench": _gradbench,
        }[args.command]
        if not getattr(args, "json", False):
            return command(args, show_progress)
        _JSON_OUT.append(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return command(args, show_progress)
        finally:
            _JSON_OUT.pop()
    except GradlabError as error:
        message = _as_flag(error, parser, args.command)
        if isinstance(error, ProblemError) and "raised KeyError" in message:
            message += _data_hint(args)
        return _fail(args.command, message)
    except MemoryError:
        size = "--sizes" if args.command == "bench" else "--n"
        return _fail(args.command, f"out of memory: {size} asks for more than this machine has")
    except KeyboardInterrupt:
        print(f"gradlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        # Raised by a --problem's own code (make_data, a callback): argparse's exits happen
        # before this block. Say so, rather than end silently with its status.
        return _fail(
            args.command,
            f"the problem's code called sys.exit({exit_.code!r}) (--problem must return or raise)",
        )
    except BrokenPipeError:
        # The reader went away (`gradlab compare | head`): stop quietly, as `cat` does, and
        # point stdout at nothing so that Python's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _data_hint(args: argparse.Namespace) -> str:
    """What to do when the loss looked up a key nobody gave: the data's own names."""
    if getattr(args, "made_no_data", False):
        return (
            "; the problem makes no data (no make_data) and --data gave none: if its loss "
            "reads data, give it with --data FILE"
        )
    if getattr(args, "data", None) is not None:
        return (
            f"; --data holds {', '.join(args.data_names) or 'no arrays'}: if the loss reads "
            "that key from the data, add it to --data"
        )
    return ""


def _fail(command: str, message: str) -> int:
    print(f"gradlab {command}: error: {message}", file=sys.stderr)
    return 2


def _as_flag(error: GradlabError, parser: argparse.ArgumentParser, command: str) -> str:
    """The error's message, naming the command-line flag where the library named an argument.

    The library names its arguments (``lr``, ``init['w']``, ``batch_size``); on the command
    line the user wrote flags (``--lr``, ``--init``, ``--batch-size``). One table for all.
    """
    message = str(error)
    argument = getattr(error, "argument", None)
    if not isinstance(argument, str) or argument.startswith("-"):
        return message
    base = re.split(r"[\[.]", argument, maxsplit=1)[0]
    flag = _FLAGS.get(base, f"--{base.replace('_', '-')}")
    if flag not in _option_strings(parser, command):
        return message
    if message.startswith(f"{argument}: "):
        return f"{flag}: {message[len(argument) + 2 :]}"
    return f"{flag}: {message}"


#: Library argument names whose flag is not simply ``--name``.
_FLAGS = {
    "loss": "--stop-loss",
    "grad_norm": "--stop-grad-norm",
    "resume": "--init",
    "reference": "--reference",
    "dtypes": "--dtypes",
}


def _option_strings(parser: argparse.ArgumentParser, command: str) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {
                option
                for sub_action in action.choices[command]._actions
                for option in sub_action.option_strings
            }
    return set()
