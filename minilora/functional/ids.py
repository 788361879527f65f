"""Integer ids (token ids, class labels): taken as arrays and checked before they index anything.

Shared by embedding (ids pick rows) and cross_entropy (ids pick classes), and by
models that take token ids.
"""
import numpy as np

from .. import backend
from ..autograd import Tensor


def ids_array(ids):
    """Integer ids as an array, left where they are: a Tensor gives its array, a list becomes a NumPy array."""
    ids = ids.data if isinstance(ids, Tensor) else ids
    return ids if hasattr(ids, "dtype") else np.asarray(ids)


def check_class_ids(op, ids, num_classes, ignore_index=None):
    """Raise IndexError naming the bad ids: CuPy would silently wrap them around instead.

    Checking host ids costs nothing; checking ids already on the GPU must wait
    for the GPU. So the ops check ids *before* moving them: a training loop that
    feeds host batches never waits.
    """
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{op}: ids must be integers, got dtype {ids.dtype}")
    valid = (ids >= 0) & (ids < num_classes)
    if ignore_index is not None:
        valid |= ids == ignore_index
    if not bool(valid.all()):
        bad = backend.to_numpy(ids[~valid])
        raise IndexError(
            f"{op}: ids {sorted(set(bad.tolist()))[:10]} are outside [0, {num_classes}); "
            f"{bad.size} of {ids.size} positions are bad. Fix: check the tokenizer/vocabulary size"
            + (f" or mark ignored positions with {ignore_index}." if ignore_index is not None else ".")
        )
