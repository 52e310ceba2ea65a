"""gradlab as a GradBench tool: any gradlab engine answers GradBench's evals.

GradBench (github.com/gradbench/gradbench) runs an *eval* and a *tool* as two programs that
exchange JSON lines: the eval sends ``start``, ``define``, ``evaluate`` and ``analysis``
messages; the tool answers each with the message's ``id``. This module is the tool's side,
for every gradlab engine at once::

    gradlab gradbench --engine jax
    python -m gradlab.gradbench --engine torch

so that GradBench's own command line can run it (``--tool 'gradlab gradbench --engine
jax'``) and validate its outputs. The evals gradlab implements are in
``gradlab.gradbench._evals`` (``EVALS``); each is a gradlab problem that every engine
differentiates.

Timing: each ``evaluate`` runs its function once first (that call, with any tracing or
compilation, reported as ``"warmup"``; not for ``particle`` and ``saddle`` on torch,
which run eagerly and take a minute a run), then at least ``min_runs`` times and
until ``min_seconds`` have accumulated, one ``"evaluate"`` timing per run, each waited for
(asynchronous engines are synchronised inside the timed region). Reading the input into
engine arrays is reported apart, as ``"prepare"``.

Nothing a message holds crashes the tool or leaves it hanging: a malformed line, an unknown
module, function or message kind, an input of the wrong shape or a failing computation is
answered ``{"success": false, "error": ...}``, and the tool reads on. Every reply is one
line of strict JSON (no NaN or infinity, valid Unicode), and every request is bounded:

- a line holds at most ``MAX_LINE`` characters (2²⁸; GradBench's largest input, k-means'
  100,000 points of 16, is about 35 MB of JSON); a longer one is skipped unread;
- each eval's sizes, and their products that measure a run's memory and work, have bounds
  well above GradBench's largest (``EVALS[name].limits``: ``gradlab.gradbench._evals``);
- ``min_runs`` is at most ``MAX_RUNS`` (100,000) and ``min_seconds`` at most
  ``MAX_SECONDS`` (300); beyond either the input is refused;
- an ``evaluate`` makes at most ``MAX_RUNS`` timed runs, and starts none after
  ``BUDGET_SECONDS`` (600) of wall-clock time since it began, whatever ``min_seconds`` asks
  of a function that takes microseconds; one timed run is always made (a run is not
  interrupted: the size bounds keep it finite).
"""

from gradlab.gradbench._ba import BundleAdjustment as BundleAdjustment
from gradlab.gradbench._ht import HandTracking as HandTracking
from gradlab.gradbench._problems import LSTM as LSTM
from gradlab.gradbench._problems import ODE as ODE
from gradlab.gradbench._problems import Det as Det
from gradlab.gradbench._problems import GradBenchGMM as GradBenchGMM
from gradlab.gradbench._problems import KMeans as KMeans
from gradlab.gradbench._server import BUDGET_SECONDS as BUDGET_SECONDS
from gradlab.gradbench._server import MAX_LINE as MAX_LINE
from gradlab.gradbench._server import MAX_RUNS as MAX_RUNS
from gradlab.gradbench._server import MAX_SECONDS as MAX_SECONDS
from gradlab.gradbench._server import Tool as Tool
from gradlab.gradbench._server import main as main
from gradlab.gradbench._server import serve as serve

__all__ = [
    "BUDGET_SECONDS",
    "LSTM",
    "MAX_LINE",
    "MAX_RUNS",
    "MAX_SECONDS",
    "ODE",
    "BundleAdjustment",
    "Det",
    "GradBenchGMM",
    "HandTracking",
    "KMeans",
    "Tool",
    "main",
    "serve",
]
