"""Gradient engines: the protocol, the built-in engines and the registry.

No engine module imports its framework at import time; each does so when an engine is
constructed, so ``import gradlab`` imports no framework (torch, jax, TensorFlow, MLX).
"""

from gradlab._loss import checked_loss as checked_loss
from gradlab.engines._complex_step import ComplexStepEngine as ComplexStepEngine
from gradlab.engines._fd import FiniteDifferenceEngine as FiniteDifferenceEngine
from gradlab.engines._jax import JaxEngine as JaxEngine
from gradlab.engines._jax import JaxForwardEngine as JaxForwardEngine
from gradlab.engines._listing import EngineInfo as EngineInfo
from gradlab.engines._listing import engine_info as engine_info
from gradlab.engines._mlx import MlxEngine as MlxEngine
from gradlab.engines._numpy import NumpyEngine as NumpyEngine
from gradlab.engines._protocol import AbstractEngine as AbstractEngine
from gradlab.engines._protocol import GradientEngine as GradientEngine
from gradlab.engines._registry import available_engines as available_engines
from gradlab.engines._registry import get_engine as get_engine
from gradlab.engines._registry import known_engines as known_engines
from gradlab.engines._registry import register_engine as register_engine
from gradlab.engines._registry import unregister_engine as unregister_engine
from gradlab.engines._tensorflow import TensorFlowEngine as TensorFlowEngine
from gradlab.engines._tensorflow import TensorFlowXlaEngine as TensorFlowXlaEngine
from gradlab.engines._torch import TorchCompileEngine as TorchCompileEngine
from gradlab.engines._torch import TorchEngine as TorchEngine
from gradlab.engines._torch import TorchForwardEngine as TorchForwardEngine
from gradlab.engines._torch import TorchFuncEngine as TorchFuncEngine
from gradlab.engines.parallel._common import DataParallel as DataParallel
from gradlab.engines.parallel._data import data_parallel as data_parallel

__all__ = [
    "AbstractEngine",
    "ComplexStepEngine",
    "DataParallel",
    "EngineInfo",
    "FiniteDifferenceEngine",
    "GradientEngine",
    "JaxEngine",
    "JaxForwardEngine",
    "MlxEngine",
    "NumpyEngine",
    "TensorFlowEngine",
    "TensorFlowXlaEngine",
    "TorchCompileEngine",
    "TorchEngine",
    "TorchForwardEngine",
    "TorchFuncEngine",
    "available_engines",
    "checked_loss",
    "data_parallel",
    "engine_info",
    "get_engine",
    "known_engines",
    "register_engine",
    "unregister_engine",
]
