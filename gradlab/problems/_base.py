"""What a problem is: a loss written once against an array namespace, and maybe a hand gradient."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradlab._checks import Shapes, check_shapes, check_tree
from gradlab._errors import (
    ArgumentError,
    ArgumentTypeError,
    HandGradientMissing,
    NotSupported,
)
from gradlab._tree import Structure, nest_of_paths

Array = Any
Params = Mapping[str, Array]
Data = Mapping[str, Array]
# A user's functions take parameters and data as any nest (dicts, lists, tuples,
# NamedTuples), and hand derivatives return the parameters' structure.
LossFn = Callable[[Any, Any, Any], Array]
HandFn = Callable[[Any, Any], "tuple[Array, Any]"]
HandHVP = Callable[[Any, Any, Any], Any]


def missing_hand_gradient(problem: AbstractProblem) -> HandGradientMissing:
    """The error for asking a problem without one for its hand-derived gradient."""
    return HandGradientMissing(
        f"problem {problem.name!r} has no hand-derived gradient, so the 'numpy' engine cannot "
        "run it; give one (value_and_grad=...) or use an autodiff engine or 'fd'"
    )


def missing_hand_hvp(problem: AbstractProblem) -> HandGradientMissing:
    """The error for asking a problem without one for its hand-derived Hessian-vector product."""
    return HandGradientMissing(
        f"problem {problem.name!r} has no hand-derived Hessian-vector product, so the 'numpy' "
        "engine cannot give its second derivatives; use an autodiff engine or 'fd'"
    )


def missing_hand_jacobian(problem: AbstractProblem) -> HandGradientMissing:
    """The error for asking a problem without one for its hand-derived Jacobian."""
    return HandGradientMissing(
        f"problem {problem.name!r} has no hand-derived Jacobian (nor, for a scalar loss, a "
        "hand-derived gradient), so the 'numpy' engine cannot give its Jacobian; give one "
        "(jacobian=...) or use an autodiff engine or 'fd'"
    )


#: How a loss may combine its rows (``AbstractProblem.reduction``).
REDUCTIONS = ("mean", "sum")


def check_reduction(reduction: object) -> str | None:
    """A problem's declared ``reduction``: ``"mean"``, ``"sum"`` or ``None``."""
    if reduction is not None and reduction not in REDUCTIONS:
        raise ArgumentError("reduction", f"must be 'mean', 'sum' or None, got {reduction!r}")
    return reduction


class AbstractProblem(abc.ABC):
    """A differentiable objective: a scalar loss of named parameters and a data batch.

    The loss is written **once**, against the array namespace ``xp`` it is given (``numpy``,
    torch's array-API namespace, ``jax.numpy``): use ``xp.sum``, ``xp.exp``, ``@`` and the
    arithmetic operators, and never import a framework. Every engine differentiates that one
    definition. A hand-derived gradient, written in NumPy, may stand beside it: that is what
    the ``numpy`` engine runs.

    Subclasses implement ``loss`` and, optionally, ``hand_value_and_grad`` (setting
    ``has_hand_gradient = True``), ``hand_hvp`` (setting ``has_hand_hvp = True``),
    ``param_shapes``, ``check_data``, ``check_params`` and ``predict``; for the command line and the
    benchmark, ``make_data`` (setting ``takes_features = True`` when it takes ``d=``),
    ``sized`` and ``initial_params``.
    """

    #: A short name for tables and error messages.
    name: str = "problem"
    #: Whether ``hand_value_and_grad`` is implemented.
    has_hand_gradient: bool = False
    #: Whether ``hand_hvp`` is implemented.
    has_hand_hvp: bool = False
    #: Whether ``hand_jacobian`` is implemented.
    has_hand_jacobian: bool = False
    #: Whether ``make_data`` takes ``d=``, a number of features (the CLI's ``--features``).
    takes_features: bool = False
    #: Whether the loss runs on NumPy, so that gradlab may evaluate it once there to name
    #: a parameter it needs and ``init`` lacks, or one it never reads (for problems that
    #: declare no parameter shapes).
    probe: bool = True
    #: How the loss combines the rows of its data, for data-parallel runs
    #: ([`data_parallel`][gradlab.data_parallel]): ``"mean"`` (the mean over rows of one
    #: loss per row), ``"sum"`` (their sum), or ``None``: not declared, or not a sum over
    #: rows (a prior term, a loss without data), which data-parallel runs refuse.
    reduction: str | None = None

    @abc.abstractmethod
    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """Return the scalar loss, computed with the array namespace ``xp`` only."""

    def check_namespace(self, xp: Any) -> None:
        """Raise ``NotSupported`` if the loss cannot be evaluated with ``xp``.

        A loss written against ``xp`` runs on any namespace (the default); a
        [`NativeProblem`][gradlab.NativeProblem] runs only where it has an implementation.
        """
        return  # a stated default (any namespace), not an abstract method

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """Return ``(loss, grads)`` computed by hand-derived NumPy code.

        Results keep the dtype of the inputs (float32 in, float32 out).

        Raises:
            HandGradientMissing: the problem has no hand-derived gradient.
        """
        raise missing_hand_gradient(self)

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """Return the Hessian-vector product H·tangent from hand-derived NumPy code.

        Raises:
            HandGradientMissing: the problem has no hand-derived Hessian-vector product.
        """
        raise missing_hand_hvp(self)

    def hand_jacobian(self, params: Params, data: Data) -> Any:
        """Return the Jacobian of the (vector-valued) loss from hand-derived NumPy code.

        Laid out as ``jax.jacobian`` lays it out: the output's structure outside, the
        parameters' inside, each block of shape ``output.shape + param.shape``.

        Raises:
            HandGradientMissing: the problem has no hand-derived Jacobian.
        """
        raise missing_hand_jacobian(self)

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """Return the model's prediction at inputs ``x`` (NumPy), for plots.

        Raises:
            NotSupported: the problem is not a model of ``y`` given ``x``.
        """
        raise NotSupported(f"problem {self.name!r} does not predict y from x")

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]] | None:
        """Return the shape of each parameter for this (checked) data, or ``None`` if free."""
        return None

    def make_data(self, n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
        """Return a generated data set of size ``n`` (for the command line and the benchmark).

        Problems with features also take ``d=`` (and set ``takes_features = True``).

        Raises:
            NotSupported: the problem does not generate data (the default).
        """
        raise NotSupported(
            f"problem {self.name!r} does not generate data: it has no make_data(n, seed=...)"
        )

    def sized(self, n: int) -> AbstractProblem:
        """Return this problem for size ``n``: itself, when ``n`` counts data points.

        Problems without data, whose size is their number of variables (Rosenbrock,
        LogSumExp), return a copy with ``n`` variables.
        """
        return self

    def initial_params(self, data: Mapping[str, np.ndarray], *, seed: int = 0) -> Any:
        """Return a starting point for a fit on ``data``: zeros of the declared shapes, in
        the nest their paths name (``"embed.kernel"``: ``{"embed": {"kernel": ...}}``).

        Problems whose zeros are a poor start (an MLP's units would stay identical)
        override it.

        Raises:
            NotSupported: the problem declares no parameter shapes.
        """
        shapes = self.param_shapes(self.check_data(data))
        if shapes is None:
            raise NotSupported(f"problem {self.name!r} declares no parameter shapes to start from")
        declared = check_shapes(shapes, "param_shapes")
        return nest_of_paths({name: np.zeros(shape) for name, shape in declared.items()})

    def constants(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Values derived from the data alone that the loss (and hand gradient) would
        otherwise recompute at every step: [`fit`][gradlab.fit] computes them once, from
        the checked data already in the run's dtype, and hands them to every engine as
        extra entries of ``data`` (``Quadratic`` gives ``{"x2": x * x}``).

        The loss must still work without them (``data["x2"] if "x2" in data else ...``):
        comparisons and direct calls pass the data alone. Each must be an array with one
        row per data row (mini-batches take its rows with the data's), under a name the
        data does not use. The default is none.
        """
        return {}

    def check_data(self, data: object) -> Any:
        """Return the data with every array finite and floating-point, or raise ``ArgumentError``.

        Data may be a mapping from name to array or any nest of dicts, lists, tuples and
        NamedTuples of arrays; float arrays come back as read-only views (never copied or
        written), anything else as float64 copies.
        """
        return check_tree(data, "data")

    def check_params(
        self,
        params: Mapping[str, np.ndarray],
        argument: str,
        structure: Structure | None = None,
    ) -> None:
        """Refuse parameters (checked, by path) that this problem cannot take, naming
        ``argument``; beyond declared shapes, which the boundary checks itself.

        The default accepts any; a [`NativeProblem`][gradlab.NativeProblem] checks them
        against its implementations' [`Layout`][gradlab.Layout]s. ``structure`` rebuilds
        the caller's nest from ``params`` (what the loss is given), where it is known.
        """
        return  # a stated default (anything the loss reads), not an abstract method

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Problem(AbstractProblem):
    """A problem made from functions: the way to bring your own objective.

    Args:
        loss: ``loss(params, data, xp) -> scalar``, written against the namespace ``xp``.
        value_and_grad: Optional hand-derived ``(params, data) -> (loss, grads)`` in NumPy.
        hvp: Optional hand-derived ``(params, tangent, data) -> H·tangent`` in NumPy.
        jacobian: Optional hand-derived ``(params, data) -> J`` in NumPy, for a ``loss`` that
            returns arrays (a vector-valued function, see [`jacobian`][gradlab.jacobian]):
            the output's structure outside, the parameters' inside, as ``jax.jacobian``.
        name: A short name for tables and messages.
        params: Optional shapes of the parameters, checked against ``init``: by path
            (``{"embed.kernel": (3, 2)}``) or nested as ``init`` is
            (``{"embed": {"kernel": (3, 2)}}``).
        reduction: ``"mean"`` or ``"sum"`` when the loss is the mean or the sum over the
            rows of its data of one loss per row, so that it can run data-parallel
            ([`data_parallel`][gradlab.data_parallel]); ``None`` (the default) otherwise.

    Examples:
        >>> import numpy as np
        >>> import gradlab
        >>> cubic = gradlab.Problem(
        ...     lambda p, d, xp: xp.sum((p["a"] * d["x"] ** 3 - d["y"]) ** 2), name="cubic")
        >>> data = {"x": np.linspace(-1, 1, 50), "y": 2 * np.linspace(-1, 1, 50) ** 3}
        >>> result = gradlab.fit(cubic, data, engine="fd", optimizer=gradlab.sgd(0.05),
        ...                      steps=200, init={"a": 0.0})
        >>> round(float(result.params["a"]), 6)
        2.0
    """

    def __init__(
        self,
        loss: LossFn,
        value_and_grad: HandFn | None = None,
        *,
        hvp: HandHVP | None = None,
        jacobian: HandFn | None = None,
        name: str = "problem",
        params: Shapes | None = None,
        reduction: str | None = None,
    ) -> None:
        if not callable(loss):
            raise ArgumentTypeError("loss", f"must be callable, got {loss!r}")
        if value_and_grad is not None and not callable(value_and_grad):
            raise ArgumentTypeError(
                "value_and_grad", f"must be callable or None, got {value_and_grad!r}"
            )
        if hvp is not None and not callable(hvp):
            raise ArgumentTypeError("hvp", f"must be callable or None, got {hvp!r}")
        if jacobian is not None and not callable(jacobian):
            raise ArgumentTypeError("jacobian", f"must be callable or None, got {jacobian!r}")
        if not isinstance(name, str) or not name:
            raise ArgumentError("name", f"must be a non-empty string, got {name!r}")
        self._loss = loss
        self._value_and_grad = value_and_grad
        self._hvp = hvp
        self._jacobian = jacobian
        self.has_hand_jacobian = jacobian is not None
        self.name = name
        self.has_hand_gradient = value_and_grad is not None
        self.has_hand_hvp = hvp is not None
        self._shapes = None if params is None else check_shapes(params, "params")
        self.reduction = check_reduction(reduction)

    def loss(self, params: Params, data: Data, xp: Any) -> Array:
        """Evaluate the user's loss."""
        return self._loss(params, data, xp)

    def hand_value_and_grad(self, params: Params, data: Data) -> tuple[Array, dict[str, Array]]:
        """Evaluate the user's hand-derived gradient.

        What it returns is checked where it enters gradlab (``gradlab._boundary``): a pair
        of a scalar loss and gradients with the parameters' names, shapes and dtype.
        """
        if self._value_and_grad is None:
            return super().hand_value_and_grad(params, data)
        return self._value_and_grad(params, data)

    def hand_hvp(self, params: Params, tangent: Params, data: Data) -> dict[str, Array]:
        """Evaluate the user's hand-derived Hessian-vector product (checked like the gradient)."""
        if self._hvp is None:
            return super().hand_hvp(params, tangent, data)
        return self._hvp(params, tangent, data)  # type: ignore[no-any-return]

    def hand_jacobian(self, params: Params, data: Data) -> Any:
        """Evaluate the user's hand-derived Jacobian (checked like the gradient)."""
        if self._jacobian is None:
            return super().hand_jacobian(params, data)
        return self._jacobian(params, data)

    def param_shapes(self, data: Mapping[str, np.ndarray]) -> Mapping[str, tuple[int, ...]] | None:
        """Return the declared parameter shapes, if any."""
        return self._shapes

    def __repr__(self) -> str:
        return f"Problem(name={self.name!r})"
