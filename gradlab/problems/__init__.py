"""Problems: objectives written once against an array namespace, with hand gradients beside."""

from gradlab.problems._base import AbstractProblem as AbstractProblem
from gradlab.problems._base import Problem as Problem
from gradlab.problems._linear import LinearRegression as LinearRegression
from gradlab.problems._linear import LogisticRegression as LogisticRegression
from gradlab.problems._quadratic import Quadratic as Quadratic

__all__ = ["AbstractProblem", "LinearRegression", "LogisticRegression", "Problem", "Quadratic"]
