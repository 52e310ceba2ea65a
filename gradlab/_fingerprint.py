"""What compiled code is keyed on: a problem object together with everything its loss reads.

A compiling engine (jax, torch-compile) traces the loss once and reuses the program. Python
lets the loss change behind it: an attribute of the problem, a variable the loss closes
over, a global it reads, an array changed in place. A cache keyed on the problem object
alone would keep answering for the old loss, so compiled code is keyed on ``key(problem)``:
the problem's identity *and* a fingerprint of the values its loss can reach. An unchanged
problem gets the same key (compiled once); a changed one gets a new key (traced again).

What the fingerprint follows, from the problem object:

- the problem's attributes (``vars``, ``__slots__``), and, for a class of the user's, the
  class attributes and methods of every class in its MRO;
- for every function it meets (the loss a [`Problem`][gradlab.Problem] wraps, methods,
  helpers, ``functools.partial``): the code, defaults, closure cells and the globals the
  code names, recursively;
- containers (dict, list, tuple, set), NumPy arrays and framework tensors by content,
  numbers and strings by value.
- gradlab's flat view of a nested problem (``Keyed``) by the
  fingerprint its problem had when the view was made (a changed problem gets a new view).

It stops at modules and at code from installed libraries (numpy, jax, torch...), which
are keyed by identity, and at objects it cannot look inside (C objects without
``__dict__``), which are keyed by identity too. Cycles are followed once.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import sysconfig
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")

#: Where installed libraries live: their code is not followed (it does not change per call).
_LIBRARY_PATHS = tuple(
    {
        path
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
        if (path := sysconfig.get_paths().get(name))
    }
)


def key(problem: object) -> tuple[int, Hashable]:
    """The cache key of compiled code for ``problem``: its identity and its fingerprint.

    Identity, because compiled code may hold the problem object; the fingerprint, because
    that object may change. Works for unhashable problems (a plain dataclass).
    """
    return _Identity(id(problem)), fingerprint(problem)


class Compiled(Generic[T]):
    """Compiled functions by key, the least recently used dropped past ``size`` (like
    ``functools.lru_cache``, but for keys made by ``key``, which unhashable problems have)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        # Fits may run in threads; ``make`` only wraps functions (compiling happens on their
        # first call), so holding the lock while it runs costs nothing.
        self._lock = threading.Lock()

    def get(self, cache_key: Hashable, make: Callable[[], T]) -> T:
        """The value under ``cache_key``, made by ``make()`` the first time."""
        with self._lock:
            if cache_key in self._items:
                self._items.move_to_end(cache_key)
                return self._items[cache_key]
            value = self._items[cache_key] = make()
            if len(self._items) > self.size:
                self._items.popitem(last=False)
            return value

    def __len__(self) -> int:
        return len(self._items)


class Keyed:
    """A gradlab object whose fingerprint was taken when it was made, from what it wraps.

    gradlab's flat view of a nested problem is made for one fingerprint of the user's
    problem and cached under it: a changed problem gets a new view. Walking into the view
    again would only repeat that walk, so the walk stops here and reads ``fingerprint``.
    """

    fingerprint: Hashable


def fingerprint(value: object) -> Hashable:
    """A hashable summary of ``value`` and of everything reachable from it that a loss reads."""
    return _Walk().of(value)


class _Identity(int):
    """An object's ``id`` in a fingerprint: equal to the int (a cache key is unchanged), and
    marked, because it differs from one process to the next and ``digest`` leaves it out."""


def digest(value: object, *, torch_tensors: bool = True) -> bytes:
    """16 bytes that are the same in every process running the same code on an equal
    ``value``: ``fingerprint(value)`` without what differs between processes.

    What processes of one run compare to find out whether they were given the same problem
    (a ``jax.distributed`` run). A fingerprint holds identities (``id``), code objects
    (whose ``repr`` holds an address) and sets (whose order follows string hashing, salted
    per process); here identities are left out, code is read as its name, bytecode,
    constants and names, and sets in sorted order. So two processes that differ only in
    what identity alone told apart (an object with nothing to look inside) look the same.

    Args:
        value: What to digest (a problem).
        torch_tensors: Whether torch tensors count by their contents, or by dtype and
            shape only: a loss run on another framework never reads them (the torch
            implementation of a ``NativeProblem`` may hold a module whose unused initial
            weights were drawn at random, differently in each process).
    """
    hasher = hashlib.blake2b(digest_size=16)
    _feed(hasher, fingerprint(value), torch_tensors)
    return hasher.digest()


def _feed(hasher: hashlib.blake2b, item: object, tensors: bool) -> None:
    if isinstance(item, _Identity):
        hasher.update(b"id;")
    elif isinstance(item, tuple) and not tensors and item[:1] == ("tensor",):
        hasher.update(f"tensor:{item[1][1:3]!r};".encode())  # ("array", dtype, shape, bytes)
    elif isinstance(item, tuple):
        hasher.update(b"(%d;" % len(item))
        for part in item:
            _feed(hasher, part, tensors)
    elif isinstance(item, types.CodeType):
        code = ("code", item.co_name, item.co_code, item.co_consts, item.co_names)
        _feed(hasher, code, tensors)
    elif isinstance(item, (set, frozenset)):
        _feed(hasher, ("set", *sorted(map(repr, item))), tensors)
    else:
        hasher.update(f"{type(item).__name__}:{item!r};".encode())


class _Walk:
    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def of(self, value: object) -> Hashable:
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            return (type(value).__name__, value)
        marker = id(value)
        if marker in self.seen:
            return ("seen", self.seen[marker])
        self.seen[marker] = len(self.seen)
        if isinstance(value, Keyed):
            return ("keyed", type(value).__qualname__, value.fingerprint)
        if isinstance(value, (np.ndarray, np.generic)):
            return _array(np.asarray(value))
        if isinstance(value, types.ModuleType):
            return ("module", value.__name__)
        if isinstance(value, (list, tuple, set, frozenset)):
            items = sorted(map(repr, value)) if isinstance(value, (set, frozenset)) else value
            return (type(value).__name__, tuple(self.of(item) for item in items))
        if isinstance(value, dict):
            return ("dict", tuple((self.of(k), self.of(v)) for k, v in value.items()))
        if isinstance(value, functools.partial):
            return ("partial", self.of(value.func), self.of(value.args), self.of(value.keywords))
        if isinstance(value, types.MethodType):
            return ("method", self.of(value.__func__), self.of(value.__self__))
        if isinstance(value, types.FunctionType):
            return self._function(value)
        if isinstance(value, type):
            return self._class(value)
        tensor = _tensor(value)
        if tensor is not None:
            return tensor
        return self._object(value)

    def _function(self, function: types.FunctionType) -> Hashable:
        module = function.__module__ or ""
        if _is_library(module):
            return ("function", module, function.__qualname__)
        cells = tuple(
            self.of(cell.cell_contents) if _filled(cell) else ("empty",)
            for cell in function.__closure__ or ()
        )
        # gradlab's own functions read only gradlab's globals, which do not change; what they
        # close over (a user's loss, a learning rate) is followed above.
        namespace = {} if module.partition(".")[0] == "gradlab" else function.__globals__
        names = tuple(
            (name, self.of(namespace[name]))
            for name in _names(function.__code__)
            if name in namespace
        )
        defaults = (self.of(function.__defaults__), self.of(function.__kwdefaults__))
        return ("function", function.__code__, cells, names, defaults)

    def _class(self, cls: type) -> Hashable:
        if _is_library(cls.__module__) or cls.__module__.startswith("gradlab."):
            return ("class", cls.__module__, cls.__qualname__, _Identity(id(cls)))
        attributes = tuple(
            (name, self.of(value))
            for klass in cls.__mro__
            if not (_is_library(klass.__module__) or klass.__module__.startswith("gradlab."))
            for name, value in vars(klass).items()
            if not (name.startswith("__") and name.endswith("__"))
        )
        return ("class", cls.__qualname__, _Identity(id(cls)), attributes)

    def _object(self, value: object) -> Hashable:
        cls = type(value)
        state: list[tuple[str, Hashable]] = []
        if hasattr(value, "__dict__"):
            state += [(name, self.of(item)) for name, item in vars(value).items()]
        for klass in cls.__mro__:
            for slot in getattr(klass, "__slots__", ()):
                if isinstance(slot, str) and hasattr(value, slot):
                    state.append((slot, self.of(getattr(value, slot))))
        if not state and not hasattr(value, "__dict__"):
            # Nothing to look inside (a C object): keyed by identity.
            return ("opaque", cls.__qualname__, _Identity(id(value)))
        return ("object", self.of(cls), tuple(state))


def _array(array: np.ndarray) -> Hashable:
    if array.dtype.hasobject:
        return ("object array", array.shape, tuple(map(repr, array.ravel().tolist())))
    digest = hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=16)
    return ("array", array.dtype.str, array.shape, digest.digest())


def _tensor(value: object) -> Hashable | None:
    """A torch tensor or jax array by content, found without importing either."""
    root = type(value).__module__.partition(".")[0]
    if root == "torch" and hasattr(value, "detach"):
        return ("tensor", _array(value.detach().cpu().numpy()))
    if root in ("jax", "jaxlib") and hasattr(value, "__array__") and hasattr(value, "shape"):
        try:
            return ("jax array", _array(np.asarray(value)))
        except Exception:  # a tracer: inside a trace, nothing to key on
            return None
    return None


def _names(code: types.CodeType) -> tuple[str, ...]:
    """Global names a code object (and the code nested in it: lambdas, comprehensions) reads."""
    names = list(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names += _names(constant)
    return tuple(dict.fromkeys(names))


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # a cell not yet assigned
        return False
    return True


@functools.cache
def _is_library(module: str | None) -> bool:
    """Whether ``module`` is installed library code (stdlib or site-packages), not the user's."""
    if not module or module == "builtins":
        return True
    loaded = sys.modules.get(module)
    path = getattr(loaded, "__file__", None)
    if path is None:
        return loaded is not None and module != "__main__"
    return path.startswith(_LIBRARY_PATHS) and not module.startswith("gradlab")
