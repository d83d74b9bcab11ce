"""Checks that a cast to an integer dtype changes no value (numpy's casts truncate and wrap silently).

Shared by the runner's input preparation (bundler/frameworks/onnx.py) and the IO descriptors
(bundler/io.py), which word their own errors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["all_whole", "int_range_overflow"]


def all_whole(arr: np.ndarray) -> bool:
    """Return whether every value of a float array is a finite whole number."""
    return bool(np.isfinite(arr).all() and (arr == np.floor(arr)).all())


def int_range_overflow(arr: np.ndarray, dtype: np.dtype) -> tuple[object, object, np.iinfo] | None:
    """Return (lowest, highest, dtype's limits) when integer or float ``arr`` holds values integer
    ``dtype`` cannot, else None (a safe cast never can)."""
    if arr.dtype.kind not in "iuf" or dtype.kind not in "iu" or not arr.size or np.can_cast(arr.dtype, dtype):
        return None
    limits = np.iinfo(dtype)
    low, high = arr.min(), arr.max()
    return (low, high, limits) if low < limits.min or high > limits.max else None
