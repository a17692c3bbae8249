"""The allow-list unpickler: what real FLAME/SMIRK files contain loads, anything else is refused."""

from __future__ import annotations

import io
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fbench.safe_pickle import UnsafePickleError, safe_load, safe_load_npy, safe_load_pickle


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _chumpy_pickle(value: np.ndarray, protocol: int) -> bytes:
    """Bytes that name chumpy.ch.Ch, as FLAME2020's generic_model.pkl does (chumpy is not installed)."""
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x, self._dirty_vars = x, set()

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch, chumpy.ch = Ch, ch
    sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch})
    try:
        return pickle.dumps({"shapedirs": Ch(value), "f": np.arange(6).reshape(2, 3)}, protocol=protocol)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_code_execution_is_refused():
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        safe_load(io.BytesIO(pickle.dumps(_RunsCode())))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_chumpy_objects_become_their_array(protocol):
    value = np.random.default_rng(0).normal(size=(4, 3, 5))
    out = safe_load(io.BytesIO(_chumpy_pickle(value, protocol)))
    assert isinstance(out["shapedirs"], np.ndarray)
    np.testing.assert_array_equal(out["shapedirs"], value)
    np.testing.assert_array_equal(out["f"], np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("fmt", ["csc", "csr", "coo"])
def test_sparse_matrices_round_trip(fmt):
    dense = np.zeros((5, 40))
    dense[np.arange(5), [0, 7, 13, 21, 39]] = [0.5, 1.0, 0.25, 2.0, 1.5]
    matrix = sp.csc_matrix(dense).asformat(fmt)
    out = safe_load(io.BytesIO(pickle.dumps({"J_regressor": matrix}, protocol=2)))["J_regressor"]
    assert sp.issparse(out)
    np.testing.assert_array_equal(out.toarray(), dense)


def test_torch_tensors_inside_an_object_npy(tmp_path):
    # SMIRK's landmark_embedding.npy stores some entries as torch tensors.
    payload = {"dyn": torch.arange(12).reshape(3, 4), "bary": torch.rand(3, 4, 3), "static": np.arange(5)}
    path = tmp_path / "embedding.npy"
    np.save(path, np.array(payload, dtype=object), allow_pickle=True)
    out = safe_load_npy(path)[()]
    assert torch.equal(out["dyn"], payload["dyn"]) and torch.equal(out["bary"], payload["bary"])
    np.testing.assert_array_equal(out["static"], payload["static"])


def test_object_npy_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_RunsCode()], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafePickleError):
        safe_load_npy(path)


def test_plain_npy_loads_without_pickle(tmp_path):
    path = tmp_path / "plain.npy"
    np.save(path, np.eye(3))
    np.testing.assert_array_equal(safe_load_npy(path), np.eye(3))


def test_python3_protocol2_pickle(tmp_path):
    # A protocol-2 pickle written by Python 3 (array bytes via _codecs.encode); true Python 2
    # pickles (BINSTRING array data, needing latin-1) are in test_safe_pickle_py2.py.
    array = np.linspace(0, 1, 7)
    path = tmp_path / "py2.pkl"
    path.write_bytes(pickle.dumps({"v": array}, protocol=2))
    np.testing.assert_array_equal(safe_load_pickle(path)["v"], array)
