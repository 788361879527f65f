"""``minilora assignment check N``: run one exercise's checks on a package and say, in words, what failed."""
import re
import traceback

from . import checks
from .exercises import exercise
from .judging import describe_inputs

STUB = re.compile(r"^Exercise (\d+) \(")


def check_exercise(package, number):
    """(passed, report): run every case of exercise ``number`` on ``package`` and describe the outcome.

    The report names each failing case by its inputs and says what is wrong; a
    stub (NotImplementedError) of this exercise or of one it uses is reported
    once, as work not done yet, rather than as a failure of every case.
    """
    e = exercise(number)
    lines, failed = [f"Exercise {e.number}: {e.title} ({e.points} point{'s' if e.points != 1 else ''})"], 0
    all_cases = checks.cases(e.number)
    for case in all_cases:
        try:
            message = checks.judge(e.number, case, checks.run_case(package, e.number, case))
        except NotImplementedError as error:
            return False, "\n".join(lines + [_not_done(e, error)])
        except Exception as error:  # noqa: BLE001  the student's code may raise anything
            message = _raised(error)
        failed += message is not None
        lines.append(f"  {'FAIL' if message else 'ok  '}  {case.name}")
        if message:
            lines += [f"        inputs: {describe_inputs(case)}", f"        {message}"]
    passed = len(all_cases) - failed
    lines.append(f"{passed} of {len(all_cases)} cases passed." + (" Well done." if not failed else ""))
    return not failed, "\n".join(lines)


def _not_done(e, error):
    """The sentence for a NotImplementedError: this exercise's stub, or another exercise's that this one uses."""
    found = STUB.match(str(error))
    if found is None:
        return f"  your code raised NotImplementedError: {error}\n{_where(error)}"
    other = exercise(int(found.group(1)))
    if other.number == e.number:
        return f"  not implemented yet: {e.summary}\n  Hint: {e.hint}"
    return (f"  exercise {e.number} uses exercise {other.number} ({other.title}), which is not done yet.\n"
            f"  Do exercise {other.number} first: minilora assignment check {other.number}")


def _raised(error):
    return f"your code raised {type(error).__name__}: {error}\n{_where(error)}"


def _where(error):
    """Where the exception came from: the innermost frame, as 'file:line in function'."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"        (at {last.filename}:{last.lineno} in {last.name}: {last.line})"
