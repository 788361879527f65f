"""Files that are never half-written: safetensors and JSON, saved to a temporary file and renamed.

A rename within one folder is atomic, so a crash mid-save leaves the previous
file whole. Loading a truncated or corrupt file raises ValueError naming it.
"""
import json
import os
import tempfile

import numpy as np

from . import backend


def _atomic_write(path, write):
    """Call write(temporary_path), then move the result over ``path`` in one step."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_safetensors(path, arrays, metadata=None):
    """Write a dict of name -> array (either backend) to ``path`` atomically."""
    from safetensors.numpy import save_file

    host = {name: np.ascontiguousarray(backend.to_numpy(a)) for name, a in arrays.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    _atomic_write(path, lambda tmp: save_file(host, tmp, metadata=meta))


def load_safetensors(path):
    """Read ``path`` into (dict of name -> NumPy array, metadata dict); a damaged file raises ValueError."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({type(error).__name__}: {error}); it may be "
            "truncated or corrupt. Fix: re-save it, or point to an intact copy."
        ) from None
    return arrays, metadata


def save_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    _atomic_write(path, write)


def load_json(path):
    path = os.fspath(path)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}). Fix: re-save it.") from None
