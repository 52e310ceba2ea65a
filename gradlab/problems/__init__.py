"""Problems: objectives written once against an array namespace, with hand gradients beside."""

from gradlab.problems._base import AbstractProblem as AbstractProblem
from gradlab.problems._base import Problem as Problem
from gradlab.problems._functions import LogSumExp as LogSumExp
from gradlab.problems._functions import Rosenbrock as Rosenbrock
from gradlab.problems._gmm import GMM as GMM
from gradlab.problems._gradbench import LSTM as LSTM
from gradlab.problems._gradbench import ODE as ODE
from gradlab.problems._gradbench import Det as Det
from gradlab.problems._gradbench import GradBenchGMM as GradBenchGMM
from gradlab.problems._gradbench import KMeans as KMeans
from gradlab.problems._linear import LinearRegression as LinearRegression
from gradlab.problems._linear import LogisticRegression as LogisticRegression
from gradlab.problems._mlp import MLP as MLP
from gradlab.problems._native import Layout as Layout
from gradlab.problems._native import NativeProblem as NativeProblem
from gradlab.problems._native import torch_module as torch_module
from gradlab.problems._polynomial import LeastSquares as LeastSquares
from gradlab.problems._polynomial import PolynomialRegression as PolynomialRegression
from gradlab.problems._quadratic import Quadratic as Quadratic
from gradlab.problems._softmax import SoftmaxRegression as SoftmaxRegression

__all__ = [
    "GMM",
    "LSTM",
    "MLP",
    "ODE",
    "AbstractProblem",
    "Det",
    "GradBenchGMM",
    "KMeans",
    "Layout",
    "LeastSquares",
    "LinearRegression",
    "LogSumExp",
    "LogisticRegression",
    "NativeProblem",
    "PolynomialRegression",
    "Problem",
    "Quadratic",
    "Rosenbrock",
    "SoftmaxRegression",
    "torch_module",
]
