"""Restricted unpickling for FLAME files and SMIRK assets.

FLAME's `generic_model.pkl`, SMIRK's `landmark_embedding.npy` and `FLAME_masks.pkl`
are pickles. Plain `pickle.load` would run whatever code a tampered file names, so
they are read with an allow-list: numpy arrays and scalars, scipy sparse matrices,
torch tensors (storages are read back with `torch.load(weights_only=True)`), a few
builtin containers, and chumpy arrays, which are replaced by their numpy value (the
array in their pickled state's `x`), so chumpy never needs to be installed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
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


def _load_storage_from_bytes(data: bytes) -> Any:
    # A torch tensor pickled with plain pickle keeps its storage as torch.save bytes
    # (torch.storage._load_from_bytes); read those with torch's own safe loader.
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


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
_BUILTINS_ALLOWED = {"set", "frozenset", "object", "list", "dict", "tuple", "slice", "complex", "bytearray"}
_SPARSE_FORMATS = ("csc", "csr", "coo")


class SafeUnpickler(pickle.Unpickler):
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

            return getattr(torch._utils, name)
        if module == "torch.storage" and name == "_load_from_bytes":
            return _load_storage_from_bytes
        raise UnsafePickleError(f"refusing to load {module}.{name} (not on fbench's allow-list)")


def _resolve(obj: Any) -> Any:
    """Replace placeholders by plain values, recursively through containers."""
    if isinstance(obj, _Chumpy):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "x" not in state:
            raise UnsafePickleError("a chumpy object without an 'x' array: only plain chumpy arrays are supported")
        return np.asarray(_resolve(state["x"]))
    if isinstance(obj, _SparseMatrix):
        import scipy.sparse as sp

        state = obj.state if isinstance(obj.state, dict) else {}
        shape = tuple(state.get("_shape") or state.get("shape") or ())
        if obj.fmt == "coo":  # scipy >= 1.13 keeps a `coords` tuple, older versions `row` and `col`
            coords = state["coords"] if "coords" in state else (state["row"], state["col"])
            return sp.coo_matrix((state["data"], tuple(coords)), shape=shape)
        cls = sp.csc_matrix if obj.fmt == "csc" else sp.csr_matrix
        return cls((state["data"], state["indices"], state["indptr"]), shape=shape)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        out = np.empty(obj.shape, dtype=object)
        for i, v in np.ndenumerate(obj):
            out[i] = _resolve(v)
        return out
    return obj


def safe_load(stream: BinaryIO) -> Any:
    """Unpickle from a binary stream with the allow-list (Python 2 pickles read as latin-1)."""
    return _resolve(SafeUnpickler(stream, encoding="latin1").load())


def safe_load_pickle(path: str | Path) -> Any:
    with open(path, "rb") as f:
        return safe_load(f)


def safe_load_npy(path: str | Path) -> Any:
    """Load a .npy file; object arrays (pickled payload) go through the allow-list."""
    with open(path, "rb") as f:
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
