"""Shared test set-up: the hypothesis profile and the rule that oracles may not silently skip.

.ci/run sets MINILORA_REQUIRE_ORACLES=1, so a missing torch/transformers/peft is
a failure there; on a laptop without them, oracle tests skip with the reason.
"""
import importlib
import os

import pytest

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
