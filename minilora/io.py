"""Files that are never half-written: safetensors and JSON, saved to a temporary file and renamed.

A rename within one folder is atomic, so a crash mid-save leaves the previous
file whole. A saved file gets the permissions ``open(path, "w")`` would give it:
0666 less the umask for a new file, the old mode for one it replaces. Loading a
truncated or corrupt file raises ValueError naming it.
"""
import json
import os
import secrets
import stat

import numpy as np

from . import backend

# The safetensors dtypes that safetensors' numpy framework returns as they are; BF16 is widened below.
NUMPY_DTYPES = ("F64", "F32", "F16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL", "C64")


def _atomic_write(path, write):
    """Call write(temporary_path), then move the result over ``path`` in one step."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}-{os.path.basename(path)}")
    # Created with 0666 (not tempfile.mkstemp's 0600), so the OS applies the umask, as for open(path, "w").
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        if os.path.exists(path):
            mode = stat.S_IMODE(os.stat(path).st_mode)  # open(path, "w") keeps an existing file's mode, so do we
        write(tmp)
        os.chmod(tmp, mode)  # a writer may have replaced the file: safetensors' save_file leaves it 0600
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
    """Read ``path`` into (dict of name -> NumPy array, metadata dict); a damaged file raises ValueError.

    bfloat16 tensors come back as float32 (exactly: every bfloat16 is a float32).
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
            unsupported = [f"{name!r} ({dtype})" for name, dtype in dtypes.items() if dtype not in NUMPY_DTYPES + ("BF16",)]
            arrays = {name: f.get_tensor(name) for name, dtype in dtypes.items() if dtype in NUMPY_DTYPES}
        arrays.update(_read_bfloat16(path, [name for name, dtype in dtypes.items() if dtype == "BF16"]))
    except Exception as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({type(error).__name__}: {error}); it may be "
            "truncated or corrupt. Fix: re-save it, or point to an intact copy."
        ) from None
    if unsupported:
        raise ValueError(
            f"{path}: tensor(s) {', '.join(unsupported[:5])}{' and more' if len(unsupported) > 5 else ''} have a dtype "
            f"minilora cannot read (it reads {', '.join(NUMPY_DTYPES)} and BF16). Fix: convert them to float32 "
            "and save again, e.g. in PyTorch: save_file({k: v.float() for k, v in tensors.items()}, path)."
        )
    return {name: arrays[name] for name in dtypes}, metadata


def _read_bfloat16(path, names):
    """The tensors ``names`` of a safetensors file, stored as bfloat16, as float32 arrays.

    NumPy has no bfloat16, so safetensors' numpy framework cannot return one. But a
    bfloat16 is the top half of a float32 (the same sign and 8 exponent bits, 7 of
    the 23 mantissa bits), so shifting its 16 bits left by 16 gives the float32 of
    exactly the same value. That takes a few lines and no dependency (ml_dtypes).
    The file's layout: an 8-byte little-endian header size, the JSON header
    (name -> dtype, shape, data_offsets into the data that follows), the data.
    """
    arrays = {}
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))  # safe_open has checked it: offsets and sizes agree with the shapes
        for name in names:
            begin, end = header[name]["data_offsets"]
            f.seek(8 + header_size + begin)
            bits = np.fromfile(f, dtype="<u2", count=(end - begin) // 2)
            arrays[name] = (bits.astype(np.uint32) << 16).view(np.float32).reshape(header[name]["shape"])
    return arrays


def save_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    _atomic_write(path, write)


def load_json(path):
    """Read the JSON file ``path``; a damaged one raises ValueError naming it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}). Fix: re-save it, or point to an intact copy.") from None
