"""The ``gradlab`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gradlab import recipes
from gradlab._errors import GradlabError
from gradlab.engines import available_engines

_RECIPES = {"numpy": recipes.seed_numpy, "torch": recipes.seed_torch}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradlab", description="Compare gradient engines: do they agree, and how fast?"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="fit the seed tutorial's model on every installed engine",
        description=(
            "Fit y = w·x² + b as the seed tutorial does (lr 0.001, 800 steps, from the same "
            "start) on every installed engine; print each engine's result, time per step and "
            "largest gradient disagreement with the hand-derived gradient. Exit status 0 when "
            "every engine agrees, 1 otherwise."
        ),
    )
    demo.add_argument(
        "--recipe",
        choices=sorted(_RECIPES),
        default="numpy",
        help="which of the seed's runs: numpy (float64, default) or torch (float32)",
    )
    demo.add_argument(
        "--engines",
        default=None,
        help="comma-separated engine names (default: every installed engine)",
    )
    demo.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per engine after one warm-up; the fastest is shown (default 3)",
    )
    return parser


def _demo(args: argparse.Namespace) -> int:
    from gradlab._demo import format_table, run_demo

    engines = args.engines.split(",") if args.engines else list(available_engines())
    recipe = _RECIPES[args.recipe]()
    rows = run_demo(recipe, [name.strip() for name in engines], args.repeats)
    print(
        f"Seed recipe {recipe.name!r}: {recipe.problem.name}, {recipe.steps} steps, "
        f"{recipe.dtype}, same start on every engine (time per step: fastest of "
        f"{args.repeats} runs after a warm-up)\n"
    )
    print(format_table(recipe, rows))
    disagree = [row.result.engine for row in rows if not row.agrees]
    if disagree:
        print(f"\nDisagreement beyond tolerance: {', '.join(disagree)}")
        return 1
    print(f"\nAll {len(rows)} engines agree with the hand-derived gradient.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 disagreement, 2 usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _demo(args)
    except GradlabError as error:
        print(f"gradlab: error: {error}", file=sys.stderr)
        return 2
