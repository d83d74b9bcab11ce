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
    # A float compared with max rounds max to a float: int64's 2**63 - 1 becomes 2**63, so 2.0**63 passed
    # and wrapped to -2**63. max + 1 is a power of two, exact as a float.
    too_high = high >= limits.max + 1 if arr.dtype.kind == "f" else high > limits.max
    return (low, high, limits) if low < limits.min or too_high else None
