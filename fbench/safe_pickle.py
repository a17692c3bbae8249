"""Restricted unpickling for FLAME files and SMIRK assets.

FLAME's `generic_model.pkl`, SMIRK's `landmark_embedding.npy` and `FLAME_masks.pkl`
are pickles. Plain `pickle.load` would run whatever code a tampered file names, so
they are read with an allow-list: numpy arrays and scalars, scipy sparse matrices,
torch tensors (storages are read back with `torch.load(weights_only=True)`), a few
builtin containers, and chumpy arrays, which are replaced by their numpy value (the
array in their pickled state's `x`), so chumpy never needs to be installed.

A small file must not cost a lot of memory or time (issue 16):

- the pure-Python unpickler is used (its memo is a dict; the C one sizes its memo and its
  byte buffers from numbers in the file before reading them);
- every allowed callable that allocates (numpy arrays and scalars, `bytearray`, tensors) is
  checked first: array data must come from buffers that are in the file, a view may not
  address more bytes than its buffer holds (no zero strides), and whatever is allocated
  empty (numpy's `_reconstruct`) counts against a budget of the file's size;
- the clean-up walk that replaces placeholders visits each object once (shared references
  are memoised, cycles are refused).
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
import struct
import warnings
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the allow-list."""


class _StatefulPlaceholder:
    """Stands in for a class we refuse to instantiate; keeps only its pickled state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Chumpy(_StatefulPlaceholder):
    module = "chumpy"


class _SparseMatrix(_StatefulPlaceholder):
    """scipy.sparse matrix from an old pickle; rebuilt from its arrays, whatever scipy's layout is today."""

    fmt = ""


def _sparse_class(fmt: str) -> type[_SparseMatrix]:
    return type(f"_Sparse_{fmt}", (_SparseMatrix,), {"fmt": fmt})


def load_tensor_file(source: str | Path | BinaryIO, what: str | None = None, map_location: Any = "cpu") -> Any:
    """`torch.load(source, weights_only=True)`: tensors, numbers, strings and plain containers only,
    no code from the file runs. A refused file raises UnsafePickleError saying it was refused
    because it is not a plain tensor file and what it names; torch's own message, which suggests
    loading the file unsafely, is never passed on (fbench does not do that)."""
    import re

    import torch

    what = what or str(source if isinstance(source, (str, Path)) else getattr(source, "name", "tensor file"))
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch's wording varies by version; the name does not
        detail = f"it names {named[1]}" if named else "it holds objects other than tensors and plain containers"
        raise UnsafePickleError(f"{what}: refused: not a plain tensor file ({detail})") from None


def _load_storage_from_bytes(data: bytes) -> Any:
    # A torch tensor pickled with plain pickle keeps its storage as torch.save bytes
    # (torch.storage._load_from_bytes); read those with torch's own safe loader.
    return load_tensor_file(io.BytesIO(data), "a tensor storage inside the pickle")


def _numpy_attr(module: str, name: str) -> Any:
    import importlib

    # numpy 2 moved numpy.core to numpy._core; pickles written by either name both load.
    for candidate in (module, module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"numpy has no {module}.{name}")


_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_BUILTINS_ALLOWED = {"set", "frozenset", "object", "list", "dict", "tuple", "slice", "complex", "bytearray", "bytes"}
_SPARSE_FORMATS = ("csc", "csr", "coo")


class SafeUnpickler(pickle._Unpickler):
    """The allow-list unpickler, on the pure-Python `pickle._Unpickler` so that every call and
    allocation can be checked. `budget`: bytes it may allocate without data (the file's size)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, *, budget: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.budget = budget

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.budget:
            raise UnsafePickleError(f"{what} would allocate {nbytes} bytes, more than the pickle holds "
                                    f"({self.budget} bytes left of its size): refused")
        self.budget -= nbytes

    def call(self, func: Any, args: tuple, kwargs: dict | None = None) -> Any:
        """func(*args, **kwargs) for REDUCE, NEWOBJ, OBJ and INST, checked first when func allocates."""
        guard = _guard_for(func)
        if guard is not None:
            return guard(self, *args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], tuple(args))
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self.call(cls, tuple(args)) if _guard_for(cls) else cls.__new__(cls, *args))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self.call(cls, tuple(args), kwargs) if _guard_for(cls) else cls.__new__(cls, *args, **kwargs))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: list) -> None:
        self.append(self.call(klass, tuple(args)))

    def load_bytearray8(self) -> None:  # protocol 5 sizes the buffer before reading it
        (size,) = struct.unpack("<Q", self.read(8))
        self.charge(size, "BYTEARRAY8")
        data = self.read(size)
        if len(data) != size:
            raise UnsafePickleError(f"BYTEARRAY8 of {size} bytes is truncated")
        self.append(bytearray(data))
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def find_class(self, module: str, name: str) -> Any:
        numpy_module = module.replace("numpy._core", "numpy.core")
        if (numpy_module, name) in _NUMPY_ALLOWED:
            return _numpy_attr(module, name)
        if module in ("builtins", "__builtin__") and name in _BUILTINS_ALLOWED:
            import builtins

            return getattr(builtins, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            import copyreg

            return copyreg._reconstructor
        if module == "_codecs" and name == "encode":
            # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
            import _codecs

            return _codecs.encode
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "chumpy" or module.startswith("chumpy."):
            return _Chumpy
        if module.startswith("scipy.sparse") and name.endswith("_matrix") and name[:3] in _SPARSE_FORMATS:
            return _sparse_class(name[:3])
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            import torch._utils

            _add_torch_guards()
            return getattr(torch._utils, name)
        if module == "torch.storage" and name == "_load_from_bytes":
            return _load_storage_from_bytes
        raise UnsafePickleError(f"refusing to load {module}.{name} (not on fbench's allow-list)")


def _nbytes(shape: Any, dtype: Any, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    try:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
        dtype = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise UnsafePickleError(f"{what}: invalid shape or dtype ({exc})") from exc
    if any(n < 0 for n in shape):
        raise UnsafePickleError(f"{what}: negative dimension in shape {shape}")
    return shape, dtype, math.prod(shape) * max(dtype.itemsize, 1)


def _guard_ndarray(u: SafeUnpickler, shape: Any, dtype: Any = float, buffer: Any = None, offset: int = 0,
                   strides: Any = None, order: Any = None) -> np.ndarray:
    """numpy.ndarray(shape, dtype, buffer, offset, strides): only over a buffer from the file, and
    never a view that addresses more bytes than the buffer holds (zero or overlapping strides)."""
    shape, dtype, nbytes = _nbytes(shape, dtype, "numpy.ndarray")
    if dtype.hasobject:
        raise UnsafePickleError("numpy.ndarray over a buffer of Python objects: refused")
    if not isinstance(buffer, (bytes, bytearray)):
        raise UnsafePickleError("numpy.ndarray without a data buffer in the file (it would allocate "
                                f"{nbytes} uninitialised bytes): refused")
    if nbytes > len(buffer) - int(offset):
        raise UnsafePickleError(f"numpy.ndarray of shape {shape} ({nbytes} bytes) over a buffer of {len(buffer)} "
                                "bytes (zero or overlapping strides?): refused")
    try:
        view = np.ndarray(shape, dtype, buffer, offset, strides, order)
    except (TypeError, ValueError) as exc:
        raise UnsafePickleError(f"numpy.ndarray: shape {shape}, strides {strides} do not fit its buffer ({exc})") from exc
    return view.copy()


def _guard_reconstruct(u: SafeUnpickler, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's `_reconstruct`: an empty array that __setstate__ then fills from the file's bytes
    (numpy checks the sizes agree); what it allocates counts against the file's size."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"numpy _reconstruct of {subtype!r}: only numpy.ndarray is allowed")
    if isinstance(dtype, bytes):
        dtype = dtype.decode("latin1")
    shape, dtype, nbytes = _nbytes(shape, dtype, "numpy array")
    u.charge(nbytes, f"numpy array of shape {shape}")
    return _numpy_attr("numpy.core.multiarray", "_reconstruct")(np.ndarray, shape, dtype)


def _guard_scalar(u: SafeUnpickler, dtype: Any, data: Any = None) -> Any:
    dtype = np.dtype(dtype)
    # Python 2 pickles hold the scalar's bytes as a str (read as latin-1; numpy accepts that too).
    if not dtype.hasobject and (not isinstance(data, (bytes, bytearray, str)) or len(data) < dtype.itemsize):
        raise UnsafePickleError(f"numpy scalar of {dtype.itemsize} bytes without its data in the file: refused")
    return _numpy_attr("numpy.core.multiarray", "scalar")(dtype, *(() if data is None else (data,)))


def _bytes_guard(cls: type) -> Any:
    """bytes/bytearray from data in the file (protocol 2 writes b'' as `bytes()`), never bytes(N)."""
    def guard(u: SafeUnpickler, *args: Any) -> Any:
        if args and not isinstance(args[0], (bytes, bytearray, str, list, tuple)):
            raise UnsafePickleError(f"{cls.__name__}({type(args[0]).__name__}) allocates without data in the file: "
                                    "refused")
        return cls(*args)
    return guard


def _guard_reconstructor(u: SafeUnpickler, cls: Any, base: Any, state: Any = None) -> Any:
    """copyreg._reconstructor: `base.__new__(cls, state)`; allocating bases go through their guard."""
    if base is object:
        return object.__new__(cls)
    if _guard_for(base):
        if cls is not base:
            raise UnsafePickleError(f"copyreg._reconstructor of {cls!r} on {base!r}: refused")
        return u.call(base, (state,))
    import copyreg

    return copyreg._reconstructor(cls, base, state)


def _guard_encode(u: SafeUnpickler, obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}: refused")
    import _codecs

    return _codecs.encode(obj, encoding, errors)


def _tensor_guard(rebuild: Any) -> Any:
    """torch's `_rebuild_tensor(_v2)`: a view may not address more elements than its storage
    holds (no zero-stride blow-up), offsets and strides non-negative."""
    def guard(u: SafeUnpickler, storage: Any, offset: int, size: Any, stride: Any, *rest: Any) -> Any:
        numel = math.prod(int(n) for n in size)
        with warnings.catch_warnings():  # TypedStorage.size() is deprecated, and what the pickle holds
            warnings.simplefilter("ignore")
            available = int(storage.size()) if hasattr(storage, "size") else 0
        if any(int(s) < 0 for s in stride) or int(offset) < 0 or numel > max(available - int(offset), 0):
            raise UnsafePickleError(f"tensor of size {tuple(size)}, stride {tuple(stride)} at offset {offset} over "
                                    f"a storage of {available} elements: refused")
        return rebuild(storage, offset, size, stride, *rest)
    return guard


def _guards() -> dict[Any, Any]:
    import copyreg
    import _codecs

    guards = {np.ndarray: _guard_ndarray, bytearray: _bytes_guard(bytearray), bytes: _bytes_guard(bytes), copyreg._reconstructor: _guard_reconstructor,
              _codecs.encode: _guard_encode}
    for name, guard in (("_reconstruct", _guard_reconstruct), ("scalar", _guard_scalar)):
        guards[_numpy_attr("numpy.core.multiarray", name)] = guard
    return guards


_GUARDS: dict[Any, Any] = _guards()


def _add_torch_guards() -> None:
    import torch._utils

    for rebuild in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_tensor):
        _GUARDS.setdefault(rebuild, _tensor_guard(rebuild))


def _guard_for(func: Any) -> Any:
    try:
        return _GUARDS.get(func)
    except TypeError:  # an unhashable "callable" from a crafted pickle: calling it fails on its own
        return None


def _resolve(root: Any) -> Any:
    """Replace placeholders by plain values, through containers. Each object is visited once
    (shared references stay shared, a pickle of self-sharing lists costs its own size), and a
    container that contains itself is refused."""
    memo: dict[int, Any] = {}
    active: set[int] = set()

    def visit(obj: Any) -> Any:
        if not isinstance(obj, (_StatefulPlaceholder, dict, list, tuple, np.ndarray)) or \
                (isinstance(obj, np.ndarray) and obj.dtype != object):
            return obj
        key = id(obj)
        if key in memo:
            return memo[key]
        if key in active:
            raise UnsafePickleError("a container that contains itself: refused")
        active.add(key)
        memo[key] = value = convert(obj)
        active.discard(key)
        return value

    def convert(obj: Any) -> Any:
        if isinstance(obj, _Chumpy):
            state = obj.state if isinstance(obj.state, dict) else {}
            if "x" not in state:
                raise UnsafePickleError("a chumpy object without an 'x' array: only plain chumpy arrays are supported")
            return np.asarray(visit(state["x"]))
        if isinstance(obj, _SparseMatrix):
            import scipy.sparse as sp

            state = obj.state if isinstance(obj.state, dict) else {}
            shape = tuple(state.get("_shape") or state.get("shape") or ())
            if obj.fmt == "coo":  # scipy >= 1.13 keeps a `coords` tuple, older versions `row` and `col`
                coords = state["coords"] if "coords" in state else (state["row"], state["col"])
                return sp.coo_matrix((state["data"], tuple(coords)), shape=shape)
            cls = sp.csc_matrix if obj.fmt == "csc" else sp.csr_matrix
            return cls((state["data"], state["indices"], state["indptr"]), shape=shape)
        if isinstance(obj, _StatefulPlaceholder):
            return obj
        if isinstance(obj, dict):
            return type(obj)((k, visit(v)) for k, v in obj.items())
        if isinstance(obj, (list, tuple)):
            return type(obj)(visit(v) for v in obj)
        out = np.empty(obj.shape, dtype=object)
        for i, v in np.ndenumerate(obj):
            out[i] = visit(v)
        return out

    return visit(root)


def safe_load(stream: BinaryIO) -> Any:
    """Unpickle from a binary stream with the allow-list (Python 2 pickles read as latin-1).
    Reads the rest of the stream first: its size is what the pickle may allocate."""
    data = stream.read()
    try:
        return _resolve(SafeUnpickler(io.BytesIO(data), budget=len(data), encoding="latin1").load())
    except RecursionError:
        raise UnsafePickleError("nested too deeply") from None


def safe_load_pickle(path: str | Path) -> Any:
    """A pickle file (regular files only, at most `fbench.safe_read.max_file_bytes()`)."""
    from fbench.safe_read import read_regular_file

    return safe_load(io.BytesIO(read_regular_file(path)))


def safe_load_npy(path: str | Path) -> Any:
    """Load a .npy file; object arrays (pickled payload) go through the allow-list."""
    from fbench.safe_read import read_regular_file

    with io.BytesIO(read_regular_file(path)) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read_header(f)
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        # np.save writes object arrays as one pickle of the whole array after the header.
        array = safe_load(f)
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise UnsafePickleError(f"object array payload does not match its header shape {shape}")
    return array
