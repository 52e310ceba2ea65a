"""gradlab's pytest plug-in: a test on every installed engine, results kept as baselines.

Installed with gradlab (pytest finds it through the ``pytest11`` entry point): nothing to
enable, and ``-p no:gradlab`` turns it off. It gives every test suite in the environment

- the ``gradlab_engine`` fixture: a test that takes it runs once per engine, its id naming
  the engine (``test_fit[torch]``); an engine whose framework is not installed is skipped
  with the ``pip install`` that brings it, never failed. By default the engines are the
  installed ones gradlab compares when none are named (numpy, torch, jax, fd and any
  plug-in engine): the opt-in ones (torch-compile, MLX, TensorFlow...) run where named;
- the ``gradlab_engines`` marker, to choose them for one test, a class or a module
  (``pytestmark``): ``@pytest.mark.gradlab_engines("torch", "mlx", exclude=["fd"],
  needs="hvp")``; ``"default"`` and ``"all"`` name the default set and every engine;
- the ``gradlab_baseline`` fixture (a [`Baselines`][gradlab.pytest_plugin.Baselines]):
  ``gradlab_baseline(report)`` compares a report or fit with the one stored beside the test
  file, ``baselines/<test file>/<test name>.json``, and fails with the comparison's table
  when any engine's numbers changed;
- ``--gradlab-update-baselines``, which writes the stored baselines instead (a missing one
  fails, saying so: see ``Baselines``), and ``--gradlab-engines=torch,jax,mlx``, the
  engines for every test whose marker names none (a CI job with TensorFlow installed
  passes ``--gradlab-engines=default,tensorflow``).

The "same model in two frameworks" assertion is
[`gradlab.testing.assert_same_model`][gradlab.testing.assert_same_model]: import it (a
function, not a fixture, so that helpers, ``unittest`` classes and Hypothesis tests call
it alike). The docs page "Checking models in pytest" shows all of it.

This module imports pytest and the standard library only, so that loading it (in every
pytest run of the environment) imports no framework; gradlab's engines are looked up when
a test asks for one, and a framework is imported when the engine is made. Under
pytest-xdist each worker runs the same selection, and baselines are written by the
worker that runs the test.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from gradlab import BaselineComparison

#: The marker that chooses the engines a ``gradlab_engine`` test runs on.
MARKER = "gradlab_engines"
#: The fixture a test takes to run once per engine.
FIXTURE = "gradlab_engine"
#: The option that rewrites stored baselines.
UPDATE = "--gradlab-update-baselines"
#: The folder, beside each test file, of the baselines its tests store.
FOLDER = "baselines"
#: What a test's ``user_properties`` record of each baseline written (it travels from an
#: xdist worker to the terminal summary).
_WRITTEN = "gradlab baseline"
#: The marker's help, as ``pytest --markers`` prints it.
_MARKER_HELP = (
    f"{MARKER}(*names, exclude=(), needs=()): run the test once per gradlab engine, "
    f"through its {FIXTURE} argument: the engines named ('default': the installed ones "
    "gradlab compares when none are named; 'all': every one; default: 'default', or "
    "--gradlab-engines), less those in exclude and those lacking a capability in needs "
    "('hvp', 'jacobian', 'forward mode', 'per-example', 'compiled loop'). An engine whose "
    "framework is not installed is skipped."
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--gradlab-update-baselines`` and ``--gradlab-engines``."""
    group = parser.getgroup("gradlab", "gradlab: tests on every engine, baselines")
    group.addoption(
        UPDATE,
        action="store_true",
        default=False,
        help="write each result a test passes to gradlab_baseline as its stored baseline, "
        "instead of comparing with it (review the change, then commit the files)",
    )
    group.addoption(
        "--gradlab-engines",
        metavar="NAMES",
        default=None,
        help="comma-separated engines for the gradlab_engine fixture, in every test whose "
        "gradlab_engines marker names none ('default': the installed engines gradlab "
        "compares by default; 'all': every engine, opt-in ones too)",
    )


@pytest.hookimpl(trylast=True)  # after conftests that register engines of their own
def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (suites run with ``--strict-markers``), and refuse an unknown
    engine in ``--gradlab-engines`` before anything runs."""
    config.addinivalue_line("markers", _MARKER_HELP)
    option = config.getoption("gradlab_engines")
    if option:
        try:
            _expand(_strings(option, "--gradlab-engines"), "--gradlab-engines")
        except pytest.fail.Exception as mistake:
            raise pytest.UsageError(mistake.msg) from None


@dataclass(frozen=True)
class _Choice:
    """One parameter of a ``gradlab_engine`` test: the engine, and the capabilities the
    test needs of it (checked when the engine is made)."""

    name: str
    needs: tuple[str, ...]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that takes ``gradlab_engine`` once per chosen engine."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if FIXTURE not in metafunc.fixturenames:
        if marker is not None:
            pytest.fail(
                f"{metafunc.definition.nodeid}: marked {MARKER} but takes no {FIXTURE} "
                f"argument; add it: def {metafunc.function.__name__}({FIXTURE}, ...)",
                pytrace=False,
            )
        return
    names, needs = _selection(marker, metafunc.config.getoption("gradlab_engines"))
    metafunc.parametrize(
        FIXTURE, [pytest.param(_Choice(name, needs), id=name) for name in names], indirect=True
    )


def _selection(marker: pytest.Mark | None, option: str | None) -> tuple[list[str], tuple[str, ...]]:
    """The engines a test runs on, and the capabilities it needs: from its marker, else
    ``--gradlab-engines``, else gradlab's default set; a typo fails the collection."""
    from gradlab.engines._protocol import CAPABILITIES

    args: Sequence[object] = marker.args if marker is not None else ()
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    unknown = sorted(set(options) - {"exclude", "needs"})
    if unknown:
        _refuse(f"{MARKER} takes exclude= and needs=, not {', '.join(unknown)}")
    if args:
        names = _expand(_strings(args, MARKER), MARKER)
    elif option:
        names = _expand(_strings(option, "--gradlab-engines"), "--gradlab-engines")
    else:
        names = _expand(["default"], MARKER)
    excluded = set(_expand(_strings(options.get("exclude", ()), "exclude"), "exclude"))
    needs = tuple(_strings(options.get("needs", ()), "needs"))
    for capability in needs:
        if capability not in CAPABILITIES:
            _refuse(
                f"{MARKER}: needs has {capability!r}, which is not a capability; "
                f"choose from {', '.join(map(repr, CAPABILITIES))}"
            )
    return [name for name in names if name not in excluded], needs


def _strings(value: object, argument: str) -> list[str]:
    """A marker argument as names: a string (comma-separated names) or a sequence of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        _refuse(f"{argument}: must be engine names (strings), got {value!r}")
    for item in items:
        if not isinstance(item, str):
            _refuse(f"{argument}: must be engine names (strings), got {item!r}")
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


def _expand(names: list[str], argument: str) -> list[str]:
    """Engine names in order, once each, with ``"default"`` and ``"all"`` expanded; an
    unknown name fails with gradlab's suggestion."""
    from gradlab._errors import UnknownEngine
    from gradlab.engines._registry import default_engines, known_engines

    known = known_engines()
    found: list[str] = []
    for name in names:
        if name == "default":
            found += default_engines()
        elif name == "all":
            found += known
        elif name in known:
            found.append(name)
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            _refuse(str(UnknownEngine(name, known, close[0] if close else None, argument)))
    return list(dict.fromkeys(found))


def _refuse(message: str) -> NoReturn:
    """Fail the collection with ``message`` alone (no traceback into the plug-in)."""
    pytest.fail(message, pytrace=False)


@pytest.fixture
def gradlab_engine(request: pytest.FixtureRequest) -> str:
    """The name of the engine this run of the test is for (pass it as ``engine=``).

    The test runs once per engine (see the ``gradlab_engines`` marker); an engine whose
    framework is not installed, or that lacks a capability the marker ``needs``, is
    skipped with the reason.
    """
    choice = getattr(request, "param", None)
    if not isinstance(choice, _Choice):
        pytest.fail(f"{FIXTURE} is a test argument, not a fixture to look up", pytrace=False)
    import gradlab
    from gradlab.engines._protocol import capabilities_of

    try:
        engine = gradlab.get_engine(choice.name)
    except gradlab.EngineUnavailable as missing:
        pytest.skip(str(missing))
    capable = capabilities_of(engine)
    lacking = [capability for capability in choice.needs if not capable[capability]]
    if lacking:
        pytest.skip(f"engine {choice.name!r} has no {' and no '.join(lacking)}")
    return choice.name


@pytest.fixture
def gradlab_baseline(request: pytest.FixtureRequest) -> Baselines:
    """Check a result against the baseline stored beside the test, or write it with
    ``--gradlab-update-baselines``: see [`Baselines`][gradlab.pytest_plugin.Baselines]."""
    return Baselines(
        request.node, update=bool(request.config.getoption("gradlab_update_baselines"))
    )


class Baselines:
    """The ``gradlab_baseline`` fixture: ``gradlab_baseline(result)`` checks ``result``
    against the baseline stored for this test.

    A baseline is the result saved as JSON (``result.save``) in
    ``<test file's folder>/baselines/<test file's name>/<test name>.json``, the test name
    with its parameters (``test_gradients[torch].json``) and a class's name before it
    (``TestModel.test_fit.json``); ``name=`` keeps more than one per test
    (``test_fit-adam.json``). Commit the files: they are the test's expectations.

    Without ``--gradlab-update-baselines``, each engine's numbers are compared with its
    own numbers in the baseline ([`against`][gradlab.GradientReport.against]), judged as
    the result judges engines against each other, and a change fails the test with the
    comparison's table, naming the versions that changed since. With it, the result is
    written as the new baseline and the run lists what it wrote: new, unchanged, or what
    changed.

    A missing baseline fails the test, saying how to write it, and writes nothing: a
    baseline is an expectation someone has looked at, and a test that wrote its own on a
    fresh checkout (a CI runner, a colleague who forgot to commit the file) would pass
    having compared nothing.

    Attributes:
        folder: Where this test's baselines are stored.
        update: Whether the run writes baselines (``--gradlab-update-baselines``).
    """

    def __init__(self, item: pytest.Item, *, update: bool) -> None:
        self._item = item
        self.update = update
        file = Path(str(item.path))
        self.folder = file.parent / FOLDER / file.stem
        self._test = _safe(item.nodeid.split("::", 1)[-1].replace("::", "."))
        self._used: set[Path] = set()

    def path(self, name: str | None = None) -> Path:
        """Where the baseline ``name`` of this test is stored (``None``: the test's own).

        Raises:
            ArgumentError: ``name`` is not a short word (letters, digits, ``._-``).
        """
        __tracebackhide__ = True
        if name is None:
            return self.folder / f"{self._test}.json"
        from gradlab._errors import ArgumentError

        if not isinstance(name, str) or not re.fullmatch(r"[\w.\-]{1,64}", name):
            raise ArgumentError(
                "name", f"must be a short name of letters, digits, '.', '_' or '-', got {name!r}"
            )
        return self.folder / f"{self._test}-{name}.json"

    def __call__(self, result: Any, name: str | None = None) -> BaselineComparison | None:
        """Check ``result`` against its stored baseline, or write it with
        ``--gradlab-update-baselines``.

        Args:
            result: A [`GradientReport`][gradlab.GradientReport] (``compare_gradients``,
                ``compare_hessians``, ``compare_jacobians``...), a
                [`FitComparison`][gradlab.FitComparison], a [`FitResult`][gradlab.FitResult]
                or a [`DivergenceReport`][gradlab.DivergenceReport].
            name: Another baseline of the same test (``None``: the test's own).

        Returns:
            The [`BaselineComparison`][gradlab.BaselineComparison], nothing changed; ``None``
            when the baseline was written.

        Raises:
            Regression: an ``AssertionError``: an engine's numbers changed beyond its
                tolerance, or an engine of the baseline no longer runs.
            ArgumentTypeError: ``result`` is nothing gradlab keeps as a baseline.
            ArgumentError: ``name`` is not a short name, or this test already checked it.
        """
        __tracebackhide__ = True  # pytest shows the test's line, not the plug-in's
        import gradlab
        from gradlab._errors import ArgumentError, ArgumentTypeError

        kinds = (
            gradlab.GradientReport,
            gradlab.FitComparison,
            gradlab.FitResult,
            gradlab.DivergenceReport,
        )
        if not isinstance(result, kinds):
            raise ArgumentTypeError(
                "result",
                "must be a result gradlab keeps as a baseline (a GradientReport, "
                f"FitComparison, FitResult or DivergenceReport), got {type(result).__name__}",
            )
        path = self.path(name)
        if path in self._used:
            raise ArgumentError(
                "name",
                f"this test has already checked its baseline {path.name}: give each result "
                "a name of its own (gradlab_baseline(result, name='fit'))",
            )
        self._used.add(path)
        shown = self._shown(path)
        rewrite = f"pytest {UPDATE} '{self._item.nodeid}'"
        if self.update:
            status = _status(result, path)
            path.parent.mkdir(parents=True, exist_ok=True)
            result.save(str(path))
            self._item.user_properties.append((_WRITTEN, f"{shown} ({status})"))
            return None
        if not path.is_file():
            pytest.fail(
                f"no stored baseline for this test: {shown}\n"
                f"Write it with `{rewrite}`, look at it, and commit it.",
                pytrace=False,
            )
        try:
            comparison = result.against(str(path))
        except ArgumentError as error:
            if error.argument != "baseline":
                raise
            pytest.fail(
                f"the stored baseline {shown} is not of what this test computes now: {error}\n"
                f"If the test changed on purpose, rewrite it: `{rewrite}`.",
                pytrace=False,
            )
        if not comparison.ok:
            raise gradlab.Regression(
                f"{comparison.summary()}\n\n{comparison}\n\nstored baseline: {shown}\n"
                f"If the change is one you expect (an upgrade you have checked), rewrite it: "
                f"`{rewrite}`.",
                comparison,
            )
        return comparison

    def _shown(self, path: Path) -> str:
        """``path`` relative to the run's root directory, where it is under it."""
        root = self._item.config.rootpath
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def __repr__(self) -> str:
        mode = "update" if self.update else "compare"
        return f"Baselines({str(self.folder)!r}, {mode})"


def _status(result: Any, path: Path) -> str:
    """What writing ``result`` over the baseline at ``path`` changes, in words."""
    from gradlab._errors import ArgumentError

    if not path.is_file():
        return "new"
    try:
        comparison = result.against(str(path))
    except ArgumentError as error:
        return f"replaced one of something else: {error}"
    return "unchanged" if comparison.ok else comparison.summary()


def _safe(text: str) -> str:
    """A test's name as a file name: its parameters kept, anything a file system may
    refuse (``/``, ``:``, spaces...) as ``_``."""
    return re.sub(r"[^\w.\-\[\],=+]", "_", text)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List the baselines ``--gradlab-update-baselines`` wrote (reported by the tests, on
    whichever xdist worker ran them)."""
    written = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport) and report.when == "call"
        for key, value in report.user_properties
        if key == _WRITTEN
    ]
    if written:
        count = "1 baseline" if len(written) == 1 else f"{len(written)} baselines"
        terminalreporter.write_sep("-", f"gradlab: {count} written")
        for line in written:
            terminalreporter.write_line(line)
