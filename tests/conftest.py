"""Shared test set-up: the hypothesis profile, the rule that oracles may not silently skip, GPU-only tests.

.ci/run sets MINILORA_REQUIRE_ORACLES=1, so a missing torch/transformers/peft is
a failure there; on a laptop without them, oracle tests skip with the reason.
Tests marked ``gpu`` need the cupy backend; where it cannot run (no CuPy, no
GPU, as on CI) they skip and say why. The whole suite runs on a GPU with
MINILORA_BACKEND=cupy (docs/gpu.md).
"""
import importlib
import os

import pytest

from minilora import backend
from minilora.testing import register_hypothesis_profiles

register_hypothesis_profiles()


def require_oracle(module_name):
    """Import an oracle library (torch, transformers, peft) or skip/fail as the environment demands."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        if os.environ.get("MINILORA_REQUIRE_ORACLES") == "1":
            pytest.fail(f"oracle {module_name!r} is required here (MINILORA_REQUIRE_ORACLES=1) but cannot be imported: {error}")
        pytest.skip(f"oracle {module_name!r} not installed; pip install -e '.[oracle]'")


@pytest.fixture
def torch():
    torch = require_oracle("torch")
    torch.set_default_dtype(torch.float64)
    yield torch
    torch.set_default_dtype(torch.float32)


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``gpu``, with the reason, where the cupy backend cannot run."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    reason = backend.cupy_unavailable_reason() if gpu_tests else None
    if reason:
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason=f"needs a GPU: {reason}"))
