"""gradlab: compare gradient engines.

Hand-derived NumPy gradients, torch autograd, ``jax.grad`` and central finite differences behind one
small interface ([`GradientEngine`][gradlab.GradientEngine]), problems whose loss is written once,
and one gradient-descent loop ([`fit`][gradlab.fit]) that runs on all of them.

``import gradlab`` imports NumPy only; torch and jax are imported when an engine needs them.

Examples:
    >>> import gradlab
    >>> from gradlab import recipes
    >>> result = recipes.seed_numpy().run("numpy")
    >>> result.status
    'completed'
"""

from gradlab import engines as engines
from gradlab import optimizers as optimizers
from gradlab import plots as plots
from gradlab import problems as problems
from gradlab import recipes as recipes
from gradlab import schedules as schedules
from gradlab._agreement import max_rho as max_rho
from gradlab._agreement import rho as rho
from gradlab._agreement import tolerance as tolerance
from gradlab._derivatives import hessian as hessian
from gradlab._derivatives import hvp as hvp
from gradlab._derivatives import jacobian as jacobian
from gradlab._derivatives import jvp as jvp
from gradlab._derivatives import per_example_grads as per_example_grads
from gradlab._derivatives import value_and_grad as value_and_grad
from gradlab._derivatives import vjp as vjp
from gradlab._errors import ArgumentError as ArgumentError
from gradlab._errors import ArgumentTypeError as ArgumentTypeError
from gradlab._errors import Disagreement as Disagreement
from gradlab._errors import EngineUnavailable as EngineUnavailable
from gradlab._errors import ForwardModeUnsupported as ForwardModeUnsupported
from gradlab._errors import GradlabError as GradlabError
from gradlab._errors import HandGradientMissing as HandGradientMissing
from gradlab._errors import MissingDependency as MissingDependency
from gradlab._errors import NotSupported as NotSupported
from gradlab._errors import ProblemError as ProblemError
from gradlab._errors import RankFailed as RankFailed
from gradlab._errors import Regression as Regression
from gradlab._errors import UnknownEngine as UnknownEngine
from gradlab._output import load as load
from gradlab._tap import tap as tap
from gradlab.bench._harness import BenchmarkCase as BenchmarkCase
from gradlab.bench._harness import BenchmarkResult as BenchmarkResult
from gradlab.bench._harness import Timing as Timing
from gradlab.bench._harness import benchmark as benchmark
from gradlab.comparison._audit import AuditReport as AuditReport
from gradlab.comparison._audit import Variation as Variation
from gradlab.comparison._audit import audit as audit
from gradlab.comparison._baseline import BaselineComparison as BaselineComparison
from gradlab.comparison._baseline import Change as Change
from gradlab.comparison._divergence import Divergence as Divergence
from gradlab.comparison._divergence import DivergenceReport as DivergenceReport
from gradlab.comparison._divergence import PointVerdict as PointVerdict
from gradlab.comparison._fits import FitComparison as FitComparison
from gradlab.comparison._fits import compare_fits as compare_fits
from gradlab.comparison._gradients import compare_gradients as compare_gradients
from gradlab.comparison._gradients import compare_hessians as compare_hessians
from gradlab.comparison._jacobians import compare_jacobians as compare_jacobians
from gradlab.comparison._jacobians import compare_per_example_grads as compare_per_example_grads
from gradlab.comparison._locate import locate as locate
from gradlab.comparison._report import GradientReport as GradientReport
from gradlab.comparison._report import Verdict as Verdict
from gradlab.engines import AbstractEngine as AbstractEngine
from gradlab.engines import EngineInfo as EngineInfo
from gradlab.engines import GradientEngine as GradientEngine
from gradlab.engines import available_engines as available_engines
from gradlab.engines import data_parallel as data_parallel
from gradlab.engines import engine_info as engine_info
from gradlab.engines import get_engine as get_engine
from gradlab.engines import known_engines as known_engines
from gradlab.engines import register_engine as register_engine
from gradlab.engines import unregister_engine as unregister_engine
from gradlab.fitting._fit import fit as fit
from gradlab.fitting._prepare import PreparedFit as PreparedFit
from gradlab.fitting._prepare import prepare_fit as prepare_fit
from gradlab.fitting._result import FitResult as FitResult
from gradlab.fitting._stop import Stop as Stop
from gradlab.gradbench import LSTM as LSTM
from gradlab.gradbench import ODE as ODE
from gradlab.gradbench import BundleAdjustment as BundleAdjustment
from gradlab.gradbench import Det as Det
from gradlab.gradbench import GradBenchGMM as GradBenchGMM
from gradlab.gradbench import HandTracking as HandTracking
from gradlab.gradbench import KMeans as KMeans
from gradlab.optimizers import GradientTransformation as GradientTransformation
from gradlab.optimizers import adam as adam
from gradlab.optimizers import adamw as adamw
from gradlab.optimizers import apply_updates as apply_updates
from gradlab.optimizers import chain as chain
from gradlab.optimizers import clip_by_global_norm as clip_by_global_norm
from gradlab.optimizers import momentum as momentum
from gradlab.optimizers import rmsprop as rmsprop
from gradlab.optimizers import sgd as sgd
from gradlab.problems import GMM as GMM
from gradlab.problems import MLP as MLP
from gradlab.problems import AbstractProblem as AbstractProblem
from gradlab.problems import Layout as Layout
from gradlab.problems import LeastSquares as LeastSquares
from gradlab.problems import LinearRegression as LinearRegression
from gradlab.problems import LogisticRegression as LogisticRegression
from gradlab.problems import LogSumExp as LogSumExp
from gradlab.problems import NativeProblem as NativeProblem
from gradlab.problems import PolynomialRegression as PolynomialRegression
from gradlab.problems import Problem as Problem
from gradlab.problems import Quadratic as Quadratic
from gradlab.problems import Rosenbrock as Rosenbrock
from gradlab.problems import SoftmaxRegression as SoftmaxRegression
from gradlab.problems import equinox_module as equinox_module
from gradlab.problems import flax_module as flax_module
from gradlab.problems import keras_model as keras_model
from gradlab.problems import keras_problem as keras_problem
from gradlab.problems import nnx_module as nnx_module
from gradlab.problems import torch_module as torch_module

__version__ = "0.1.0"

__all__ = [
    "GMM",
    "LSTM",
    "MLP",
    "ODE",
    "AbstractEngine",
    "AbstractProblem",
    "ArgumentError",
    "ArgumentTypeError",
    "AuditReport",
    "BaselineComparison",
    "BenchmarkCase",
    "BenchmarkResult",
    "BundleAdjustment",
    "Change",
    "Det",
    "Disagreement",
    "Divergence",
    "DivergenceReport",
    "EngineInfo",
    "EngineUnavailable",
    "FitComparison",
    "FitResult",
    "ForwardModeUnsupported",
    "GradBenchGMM",
    "GradientEngine",
    "GradientReport",
    "GradientTransformation",
    "GradlabError",
    "HandGradientMissing",
    "HandTracking",
    "KMeans",
    "Layout",
    "LeastSquares",
    "LinearRegression",
    "LogSumExp",
    "LogisticRegression",
    "MissingDependency",
    "NativeProblem",
    "NotSupported",
    "PointVerdict",
    "PolynomialRegression",
    "PreparedFit",
    "Problem",
    "ProblemError",
    "Quadratic",
    "RankFailed",
    "Regression",
    "Rosenbrock",
    "SoftmaxRegression",
    "Stop",
    "Timing",
    "UnknownEngine",
    "Variation",
    "Verdict",
    "__version__",
    "adam",
    "adamw",
    "apply_updates",
    "audit",
    "available_engines",
    "benchmark",
    "chain",
    "clip_by_global_norm",
    "compare_fits",
    "compare_gradients",
    "compare_hessians",
    "compare_jacobians",
    "compare_per_example_grads",
    "data_parallel",
    "engine_info",
    "engines",
    "equinox_module",
    "fit",
    "flax_module",
    "get_engine",
    "hessian",
    "hvp",
    "jacobian",
    "jvp",
    "keras_model",
    "keras_problem",
    "known_engines",
    "load",
    "locate",
    "max_rho",
    "momentum",
    "nnx_module",
    "optimizers",
    "per_example_grads",
    "plots",
    "prepare_fit",
    "problems",
    "recipes",
    "register_engine",
    "rho",
    "rmsprop",
    "schedules",
    "sgd",
    "tap",
    "tolerance",
    "torch_module",
    "unregister_engine",
    "value_and_grad",
    "vjp",
]
