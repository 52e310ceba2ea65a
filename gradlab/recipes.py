"""Complete fits, ready to run on any engine: the seed tutorial's two runs, and one MLP
classifier written natively in torch, JAX and NumPy.

The seed fits y = w·x² + b to 100 points by plain gradient descent (lr 0.001, 800 steps,
loss ½·Σ(y_pred − y)²) twice: once with hand-derived NumPy gradients in float64, once with
torch autograd in float32. Each recipe replays the seed's random draws exactly, so a recipe
run on its own engine lands where the seed's code lands.

Neither recipe touches global random state: they draw from their own generators
(``numpy.random.RandomState(100)``, ``torch.Generator().manual_seed(100)``), which produce
the same streams as the seed's ``np.random.seed(100)`` and ``torch.manual_seed(100)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab._errors import EngineUnavailable
from gradlab._tree import tree_map
from gradlab.engines._protocol import GradientEngine
from gradlab.fitting._fit import fit
from gradlab.fitting._result import FitResult
from gradlab.optimizers import GradientTransformation, adam, sgd
from gradlab.problems._base import AbstractProblem
from gradlab.problems._classifier import classifier_data, classifier_init, mlp_classifier
from gradlab.problems._quadratic import Quadratic

__all__ = ["Recipe", "mlp_frameworks", "seed_numpy", "seed_torch"]

SEED = 100
LEARNING_RATE = 0.001
STEPS = 800
N_POINTS = 100


@dataclass(frozen=True)
class Recipe:
    """A complete fit: problem, data, starting point, optimizer, step count and dtype.

    Attributes:
        name: A short name.
        problem: What is minimised.
        data: The data, as read-only NumPy arrays.
        init: The starting parameters, as read-only NumPy arrays (a dict, or a nest).
        optimizer: The optimizer.
        steps: The number of steps.
        dtype: The dtype the original run used.
    """

    name: str
    problem: AbstractProblem
    data: Mapping[str, np.ndarray]
    init: Any
    optimizer: GradientTransformation
    steps: int
    dtype: str

    def run(
        self,
        engine: str | GradientEngine = "numpy",
        *,
        dtype: str | None = None,
        steps: int | None = None,
        trajectory: bool = False,
    ) -> FitResult:
        """Run the recipe on ``engine`` (in the recipe's dtype unless ``dtype`` is given).

        ``trajectory=True`` keeps every step's parameters (see [`fit`][gradlab.fit]).

        Examples:
            >>> from gradlab import recipes
            >>> result = recipes.seed_numpy().run("numpy")
            >>> result.status, result.dtype, len(result.losses)
            ('completed', 'float64', 800)
        """
        return fit(
            self.problem,
            self.data,
            engine=engine,
            optimizer=self.optimizer,
            steps=self.steps if steps is None else steps,
            init=self.init,
            dtype=self.dtype if dtype is None else dtype,
            trajectory=trajectory,
        )


def _frozen(arrays: Any) -> Any:
    """Read-only copies of every array in a nest."""

    def freeze(value: Any) -> np.ndarray:
        array = np.array(value, copy=True)
        array.flags.writeable = False
        return array

    return tree_map(freeze, arrays)


def seed_numpy() -> Recipe:
    """The seed's first run: NumPy, hand-derived gradients, float64.

    Replays the seed's legacy RNG stream from seed 100: 100 uniform draws for the noise, then
    the two ``rand(1, 1)`` draws the tutorial makes and throws away, then ``randn()`` for w
    and ``randn()`` for b.

    Examples:
        >>> from gradlab import recipes
        >>> recipe = recipes.seed_numpy()
        >>> recipe.data["x"].shape, recipe.dtype, recipe.steps
        ((100,), 'float64', 800)
    """
    rng = np.random.RandomState(SEED)
    x = np.linspace(-1, 1, N_POINTS).reshape(N_POINTS, 1)
    y = 3 * np.power(x, 2) + 2 + 0.2 * rng.rand(x.size).reshape(N_POINTS, 1)
    rng.rand(1, 1)  # the seed's discarded w1 = np.random.rand(1, 1)
    rng.rand(1, 1)  # the seed's discarded b1 = np.random.rand(1, 1)
    w = rng.randn()
    b = rng.randn()
    return Recipe(
        name="seed_numpy",
        problem=Quadratic(),
        data=_frozen({"x": x[:, 0], "y": y[:, 0]}),
        init=_frozen({"w": w, "b": b}),
        optimizer=sgd(LEARNING_RATE),
        steps=STEPS,
        dtype="float64",
    )


def seed_torch() -> Recipe:
    """The seed's second run: torch autograd, float32.

    The data are made by torch itself, as in the seed (``torch.linspace`` and
    ``torch.rand`` in float32 differ from NumPy's in the last bits): from seed 100, the noise
    ``0.2 * rand(100, 1)``, then ``w = randn(1, 1)``; ``b`` starts at zero.

    Raises:
        EngineUnavailable: torch is not installed (``pip install 'gradlab[torch]'``).
    """
    try:
        torch = importlib.import_module("torch")
    except ImportError as error:
        raise EngineUnavailable("torch", "torch", "torch") from error
    generator = torch.Generator().manual_seed(SEED)
    x = torch.unsqueeze(torch.linspace(-1, 1, N_POINTS), dim=1)
    y = 3 * x.pow(2) + 2 + 0.2 * torch.rand(x.size(), generator=generator)
    w = torch.randn(1, 1, generator=generator)
    b = torch.zeros(1, 1)
    return Recipe(
        name="seed_torch",
        problem=Quadratic(),
        data=_frozen({"x": x.numpy()[:, 0], "y": y.numpy()[:, 0]}),
        init=_frozen({"w": w.numpy()[0, 0], "b": b.numpy()[0, 0]}),
        optimizer=sgd(LEARNING_RATE),
        steps=STEPS,
        dtype="float32",
    )


def mlp_frameworks() -> Recipe:
    """One MLP classifier written three times, as users write it in each framework.

    A ``torch.nn.Module`` (``nn.Sequential(Linear(2, 16), Tanh(), Linear(16, 3))``, run
    through ``torch.func.functional_call``), a JAX function with Flax-style kernels, and
    NumPy with hand-derived backpropagation (and its R-operator for Hessian-vector
    products), as one [`NativeProblem`][gradlab.NativeProblem];
    a [`Layout`][gradlab.Layout] maps the kernels onto torch's transposed weights. Softmax
    cross-entropy on 120 points of a three-armed spiral; 200 Adam steps (lr 0.05) in float64
    from one Glorot-normal start, the same on every engine. Every engine differentiates its
    own framework's implementation: ``gradlab demo --recipe mlp-frameworks`` shows that the
    gradients, Hessian-vector products and fits agree.

    Examples:
        >>> from gradlab import recipes
        >>> recipe = recipes.mlp_frameworks()
        >>> [layer["kernel"].shape for layer in recipe.init["layers"]]
        [(2, 16), (16, 3)]
        >>> result = recipe.run("numpy")
        >>> result.status, result.final_loss < 0.5 * recipe.run("numpy", steps=1).final_loss
        ('completed', True)
    """
    sizes = (2, 16, 3)
    return Recipe(
        name="mlp_frameworks",
        problem=mlp_classifier(sizes),
        data=_frozen(classifier_data(120, sizes[-1], seed=0)),
        init=_frozen(classifier_init(sizes, seed=0)),
        optimizer=adam(0.05),
        steps=200,
        dtype="float64",
    )
