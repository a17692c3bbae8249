"""FLAME/SMIRK files as Python 2 wrote them, assembled opcode by opcode.

FLAME2020's generic_model.pkl and SMIRK's FLAME_masks.pkl were written by Python 2's cPickle
(protocol 2): every `str` - dictionary keys and, above all, numpy's raw array data in the state
tuple of `numpy.core.multiarray._reconstruct` - is a SHORT_BINSTRING/BINSTRING opcode, i.e.
undecoded bytes. Python 3 decodes those with the unpickler's `encoding`; only latin-1 maps every
byte to one code point, which numpy's `ndarray.__setstate__` encodes back (the documented way to
read Python 2 numpy pickles: numpy/_core/src/multiarray/methods.c array_setstate, and smplx's
`pickle.load(f, encoding='latin1')`, smplx/body_models.py FLAME.__init__). `pickle.dumps` in
Python 3 never emits these opcodes for array data, so the bytes are written here by hand.

The objects are laid out as Python 2 pickled them: chumpy's `Ch` via NEWOBJ + BUILD with its
attribute dict (the array in `x`), a scipy 0.x `scipy.sparse.csc.csc_matrix` via NEWOBJ + BUILD
with `data`, `indices`, `indptr`, `_shape`, `maxprint`, `format`.
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest

from fbench.flame.io import load_flame_model
from fbench.safe_pickle import safe_load, safe_load_pickle


class Py2Pickle:
    """A tiny protocol-2 writer that emits Python 2's opcodes for `str` (bytes) values."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def op(self, code: bytes) -> "Py2Pickle":
        self.out += code
        return self

    def string(self, data: bytes) -> "Py2Pickle":
        if len(data) < 256:
            return self.op(b"U" + bytes([len(data)]) + data)  # SHORT_BINSTRING
        return self.op(b"T" + struct.pack("<i", len(data)) + data)  # BINSTRING

    def int(self, value: int) -> "Py2Pickle":
        if 0 <= value < 256:
            return self.op(b"K" + bytes([value]))  # BININT1
        return self.op(b"J" + struct.pack("<i", value))  # BININT

    def glob(self, module: str, name: str) -> "Py2Pickle":
        return self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")  # GLOBAL

    def tuple_of(self, *items) -> "Py2Pickle":
        self.op(b"(")  # MARK
        for item in items:
            self.value(item)
        return self.op(b"t")  # TUPLE

    def array(self, a: np.ndarray) -> "Py2Pickle":
        """numpy 1.x on Python 2: _reconstruct(ndarray, (0,), 'b') then BUILD with
        (version 1, shape, dtype, is_fortran, raw bytes as a Python 2 str)."""
        a = np.ascontiguousarray(a)
        self.glob("numpy.core.multiarray", "_reconstruct")
        self.glob("numpy", "ndarray").int(0).op(b"\x85").string(b"b").op(b"\x87R")  # TUPLE1, TUPLE3, REDUCE
        self.op(b"(").int(1).tuple_of(*a.shape)
        # dtype('<f8'): numpy.dtype('f8', 0, 1) then BUILD (3, '<', None, None, None, -1, -1, 0)
        code = a.dtype.str[1:].encode()
        self.glob("numpy", "dtype").string(code).int(0).int(1).op(b"\x87R")
        self.op(b"(").int(3).string(a.dtype.str[:1].encode() if a.dtype.itemsize > 1 else b"|")
        self.op(b"NNN").int(-1).int(-1).int(0).op(b"tb")
        self.op(b"\x89").string(a.tobytes()).op(b"tb")  # NEWFALSE (C order), raw data, TUPLE, BUILD
        return self

    def new_object(self, module: str, name: str, state: dict) -> "Py2Pickle":
        self.glob(module, name).op(b")\x81")  # EMPTY_TUPLE, NEWOBJ
        return self.dict_of(state).op(b"b")  # BUILD

    def dict_of(self, d: dict) -> "Py2Pickle":
        self.op(b"}(")  # EMPTY_DICT, MARK
        for key, value in d.items():
            self.string(key.encode()).value(value)
        return self.op(b"u")  # SETITEMS

    def value(self, v) -> "Py2Pickle":
        if isinstance(v, np.ndarray):
            return self.array(v)
        if isinstance(v, bool):
            return self.op(b"\x88" if v else b"\x89")
        if isinstance(v, int):
            return self.int(v)
        if isinstance(v, bytes):
            return self.string(v)
        if v is None:
            return self.op(b"N")
        if isinstance(v, tuple):
            return self.tuple_of(*v)
        if isinstance(v, set):  # __builtin__.set([...])
            self.glob("__builtin__", "set").op(b"](")
            for item in v:
                self.value(item)
            return self.op(b"e\x85R")  # APPENDS, TUPLE1, REDUCE
        if isinstance(v, dict):
            return self.dict_of(v)
        if callable(v):
            v(self)
            return self
        raise TypeError(type(v))

    def dump(self, obj: dict) -> bytes:
        self.value(obj)
        return bytes(self.out + b".")


def _chumpy(x: np.ndarray):
    return lambda p: p.new_object("chumpy.ch", "Ch", {"x": x, "_dirty_vars": set(), "_cache": {}})


def _csc(dense: np.ndarray):
    import scipy.sparse as sp

    m = sp.csc_matrix(dense)
    state = {"data": m.data, "indices": m.indices.astype(np.int32), "indptr": m.indptr.astype(np.int32),
             "_shape": tuple(int(s) for s in m.shape), "maxprint": 50, "format": b"csc"}
    return lambda p: p.new_object("scipy.sparse.csc", "csc_matrix", state)


def _tiny_model(rng):
    """A 6-vertex, 3-joint FLAME-format model with non-ASCII bytes in every float array."""
    v, j, k = 6, 3, 4
    model = {
        "v_template": rng.normal(scale=0.1, size=(v, 3)),
        "f": np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]], dtype=np.uint32),
        "shapedirs": rng.normal(size=(v, 3, k)),
        "posedirs": rng.normal(size=(v, 3, 9 * (j - 1))),
        "J_regressor": np.abs(rng.normal(size=(j, v))) * (rng.random((j, v)) < 0.5),
        "kintree_table": np.array([[4294967295, 0, 1], [0, 1, 2]], dtype=np.int64),
        "weights": rng.dirichlet(np.ones(j), size=v),
    }
    return model


def _py2_model_bytes(model: dict) -> bytes:
    layout = dict(model, shapedirs=_chumpy(model["shapedirs"]), J_regressor=_csc(model["J_regressor"]),
                  bs_style=b"lbs", bs_type=b"lrotmin")
    return Py2Pickle().dump(layout)


def test_the_fixture_is_a_python2_pickle_that_needs_latin1():
    model = _tiny_model(np.random.default_rng(0))
    data = _py2_model_bytes(model)
    ops = {op.name for op, _, _ in __import__("pickletools").genops(data)}
    assert {"BINSTRING", "SHORT_BINSTRING", "NEWOBJ"} <= ops and "BINUNICODE" not in ops
    assert len(data) < 8000
    # Python 3's default (ASCII) cannot decode the array bytes: only latin-1 reads this file.
    with pytest.raises(UnicodeDecodeError):
        pickle.Unpickler(io.BytesIO(Py2Pickle().dump({"v": model["v_template"]}))).load()


def test_python2_flame_model_with_chumpy_and_sparse_loads_exactly(tmp_path):
    model = _tiny_model(np.random.default_rng(1))
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(_py2_model_bytes(model))
    raw = safe_load_pickle(path)
    assert raw["bs_style"] == "lbs"
    np.testing.assert_array_equal(raw["shapedirs"], model["shapedirs"])
    np.testing.assert_array_equal(raw["J_regressor"].toarray(), model["J_regressor"])
    loaded = load_flame_model(path)
    for key, name in (("v_template", "v_template"), ("f", "faces"), ("shapedirs", "shapedirs"),
                      ("posedirs", "posedirs"), ("J_regressor", "j_regressor"), ("weights", "weights")):
        np.testing.assert_array_equal(loaded[name], model[key].astype(loaded[name].dtype), err_msg=key)
    np.testing.assert_array_equal(loaded["parents"], [-1, 0, 1])


def test_python2_masks_pickle_loads(tmp_path):
    # SMIRK's FLAME_masks.pkl: a Python 2 dict of int64 vertex-index arrays.
    masks = {"face": np.arange(300, 5000, 7, dtype=np.int64), "lips": np.array([1, 200, 4000], dtype=np.int64)}
    out = safe_load(io.BytesIO(Py2Pickle().dump(masks)))
    assert set(out) == set(masks)
    for name, idx in masks.items():
        np.testing.assert_array_equal(out[name], idx)
