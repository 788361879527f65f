"""Each exercise's checks: its cases, how to run one on a package, and how to judge the result.

    cases(number) -> [Case]                        deterministic, small float64 inputs
    run_case(package, number, case) -> {key: array} the values to grade, computed by ``package``
    judge(number, case, actual, expected=None) -> None, or a sentence for the student

``package`` is the ``minilora`` module under test (a student's copy, or the
instructor's); run_case uses only it, never the minilora this module belongs
to, and returns plain NumPy arrays. It runs the reference ops on the NumPy
backend, whatever $MINILORA_BACKEND says: the assignments are a NumPy activity. ``judge`` never trusts ``actual``: a missing key, a wrong shape, NaN or
a non-array is a message, not an exception. Without ``expected`` it judges by
the numerical gradient of the package's own forward and by properties of the
result (the student's ``minilora assignment check``); with ``expected`` (the
instructor package's run_case output) it also compares every value with it.
"""
import numpy as np

from .checks_engine import CHECKS as ENGINE
from .checks_lora import CHECKS as LORA
from .checks_ops import CHECKS as OPS
from .checks_training import CHECKS as TRAINING
from .exercises import exercise
from .judging import Case

CHECKS = {**ENGINE, **OPS, **TRAINING, **LORA}
__all__ = ["Case", "cases", "run_case", "judge"]


def _check(number):
    return CHECKS[exercise(number).number]


def cases(number):
    """The cases of exercise ``number``, in a fixed order (the same in every process)."""
    return _check(number).cases()


def run_case(package, number, case):
    """Run exercise ``number``'s code of ``package`` on ``case``: {key: float64 or int NumPy array}.

    Exceptions from the package's code (NotImplementedError from a stub, any bug) propagate.
    """
    with package.backend.using_backend("numpy"), package.reference_ops():
        result = _check(number).run(package, case)
    return {key: np.asarray(value) for key, value in result.items()}


def judge(number, case, actual, expected=None):
    """None if ``actual`` (run_case's result for ``package``) passes, else a message a student can act on."""
    try:
        return _check(number).judge(case, actual, expected)
    except Exception as error:  # noqa: BLE001  a malformed result must fail the case, never crash the judge
        return f"could not read the result ({type(error).__name__}: {error})"
