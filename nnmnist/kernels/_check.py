"""Argument checks shared by the public wrappers (kernels themselves never raise)."""
import numbers

import numpy as np


def array(name, a, dtype, ndim=None, shape=None, writable=False):
    """`a` as a C-contiguous ndarray of `dtype`, or a TypeError/ValueError naming `name`.

    Inputs that are only read may be non-contiguous (a contiguous copy is made); arrays
    the kernel writes into must already be C-contiguous and writeable, since a copy would
    silently lose the writes. dtype is never converted: float64 in is an error, not a cast.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype.name}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if writable:
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} is written in place and must be C-contiguous")
        if not a.flags.writeable:
            raise ValueError(f"{name} is written in place and must be writeable")
        return a
    return np.ascontiguousarray(a)


def indices(name, idx, ndim, upper):
    """An int32 index array whose entries all lie in [0, upper)."""
    idx = array(name, idx, np.int32, ndim=ndim)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= upper):
        raise ValueError(f"{name} has entries outside [0, {upper})")
    return idx


def sorted_rows(name, rows, upper):
    """A strictly increasing int32 row list within [0, upper) (so rows are unique)."""
    rows = array(name, rows, np.int32, ndim=1)
    if rows.size:
        if int(rows[0]) < 0 or int(rows[-1]) >= upper:
            raise ValueError(f"{name} has entries outside [0, {upper})")
        if rows.size > 1 and not bool(np.all(rows[1:] > rows[:-1])):
            raise ValueError(f"{name} must be strictly increasing (sorted, unique)")
    return rows


def integer(name, v, lo, hi=None):
    """A Python int in [lo, hi]."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {bound}, got {v}")
    return v


def scalar(name, v):
    """A finite real number as float32 (the kernels compute in float32 throughout)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return np.float32(v)


def same_shape(ref_name, ref, **others):
    """Every array in `others` has the shape of `ref`."""
    for name, a in others.items():
        if a.shape != ref.shape:
            raise ValueError(f"{name} must have the shape of {ref_name} {ref.shape}, got {a.shape}")
