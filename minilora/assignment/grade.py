"""``minilora assignment grade SUBMISSION``: grade a student's copy, each exercise in a sandboxed process of its own.

For the instructor, with the full minilora installed (a student copy has no
grader). For each exercise k:

1. The hybrid package: the submission's ``minilora/`` with every other
   exercise's region replaced by the instructor's solution (``splice``), so
   that a bug in one exercise costs only that exercise. The instructor's
   ``minilora/assignment/`` (the checks) replaces the submission's.
2. A child process (``worker.py``: ``python -I -S -B``, a fresh work folder,
   a scrubbed environment, the reference ops on NumPy, hard limits on time,
   memory and file size, an audit hook) imports the hybrid and runs the cases
   that this process sends it. It sends back only plain arrays, as .npz frames
   on a pipe of its own, read here with ``allow_pickle=False``.
3. This process computes the expected values with its own minilora and judges
   (``checks.judge``). The child never sees them, so there is nothing to read
   or to patch: an exercise scores its points only if every case passes.

``grade`` returns the results; ``table`` and ``results_json`` (Gradescope's
format) report them; ``solution_copy`` fills a student copy with the
solutions (to check an autograder set-up, and for the tests).
"""
import dataclasses
import functools
import importlib
import io
import json
import os
import pickle
import re
import secrets
import selectors
import shutil
import subprocess
import signal
import site
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..cli_options import CommandError, positive_float
from ..io import save_json
from . import checks
from .exercises import BEGIN, END, EXERCISES, Region, exercise, find_regions, package_root, parse_numbers, solution_files
from .make import INSTRUCTOR_ONLY

TIMEOUT = 20.0  # seconds per exercise, the child's start included (about 1 s on a 2-core laptop)
OUTPUT_BYTES = 1 << 20  # a child that prints more is stopped
KEPT_OUTPUT = 4000  # bytes of the student's printing kept for the instructor (ExerciseResult.output)
RESULT_BYTES = 64 << 20  # at most this much data from a child (all cases together)
MEMORY_BYTES = 1 << 30  # a child's address space (a check peaks at about 150 MB)
FILE_BYTES = 16 << 20  # the largest file a child may write (in its own work folder)
SUBMISSION_BYTES, SUBMISSION_FILES = 64 << 20, 5000  # a submission (or its .zip, unpacked) must be smaller
_TITLES = {e.number: e.title for e in EXERCISES}
MARKER = re.compile(r"#\s*(BEGIN|END)\s+(SOLUTION|EXERCISE)\b")  # any line that tries to be a marker
WORKER_SOURCE = (Path(__file__).with_name("worker.py")).read_text(encoding="utf-8")


class GradeError(CommandError):
    """The grader cannot grade (no submission at that path, not a student copy): one line, exit status 2."""


@dataclasses.dataclass
class CaseResult:
    name: str
    message: str | None  # None: passed


@dataclasses.dataclass
class ExerciseResult:
    """One exercise's grade. problem: a failure of the whole exercise (markers, import, time-out, early exit)."""

    number: int
    title: str
    points: int
    cases: list
    problem: str | None = None
    seconds: float = 0.0
    output: str = ""  # what the student's code printed (its start): for the instructor, never in the report

    @property
    def passed(self):
        return self.problem is None and bool(self.cases) and all(c.message is None for c in self.cases)

    @property
    def score(self):
        return self.points if self.passed else 0

    @property
    def passed_cases(self):
        return sum(c.message is None for c in self.cases)

    @property
    def first_failure(self):
        if self.problem:
            return self.problem
        failed = next((c for c in self.cases if c.message is not None), None)
        return f"{failed.name}: {failed.message}" if failed else None

    def report(self):
        """The exercise's result for the student: every case, and what failed."""
        lines = [f"problem: {self.problem}"] if self.problem else []
        lines += [f"{'ok  ' if c.message is None else 'FAIL'}  {c.name}" + (f"\n      {c.message}" if c.message else "")
                  for c in self.cases]
        return "\n".join(lines)


# ---- the submission ---------------------------------------------------------------------------
def open_submission(path, scratch):
    """Copy the submission's ``minilora/`` package (from a folder or a .zip) into ``scratch``; its Path there.

    Only regular .py files are copied (no links, no bytecode, no C extension), so that the submission can
    neither point at the instructor's files, nor bring native code, nor change while it is graded. A GradeError says what is wrong with ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise GradeError(f"{path}: no such file or folder. Fix: pass a student copy's folder, or a .zip of it")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise GradeError(f"{path} is neither a folder nor a .zip file. Fix: pass the student's copy or a .zip of it")
        path = _unzip(path, scratch / "unzipped")
    package = _find_package(path, scratch)
    if package is None:
        raise GradeError(f"{path} holds no minilora/ package (no minilora/__init__.py at its top or one folder down). "
                         "Fix: pass the folder that 'minilora assignment make' wrote, or a .zip of its minilora/ folder")
    target = scratch / "submission" / "minilora"
    _copy_files(package, target)
    return target


def _find_package(root, scratch):
    archives = [p for p in root.iterdir() if p.suffix == ".zip" and p.is_file()]
    if len(archives) == 1 and not (root / "minilora").is_dir():  # a folder holding the student's .zip (Gradescope)
        root = _unzip(archives[0], scratch / "unzipped")
    candidates = [root / "minilora", root] + sorted(p / "minilora" for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    for candidate in candidates:
        if candidate.name == "minilora" and (candidate / "__init__.py").is_file() and not candidate.is_symlink():
            return candidate
    return None


def _unzip(path, target):
    """Unpack the .zip ``path`` into ``target``: regular files only, no path outside it, within the size limits."""
    try:
        return _unzip_members(path, target)
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise GradeError(f"{path}: cannot unpack it ({type(error).__name__}: {error}). "
                         "Fix: zip the minilora/ folder again (python -m zipfile -c submission.zip minilora)") from error


def _unzip_members(path, target):
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir() and (m.external_attr >> 16) & 0o170000 != 0o120000]
        if len(members) > SUBMISSION_FILES or sum(m.file_size for m in members) > SUBMISSION_BYTES:
            raise GradeError(f"{path}: more than {SUBMISSION_FILES} files or {SUBMISSION_BYTES >> 20} MiB unpacked. "
                             "Fix: submit only the minilora/ folder")
        for member in members:
            parts = Path(member.filename.replace("\\", "/")).parts
            if member.filename.startswith("/") or ".." in parts or not parts:
                raise GradeError(f"{path}: the entry {member.filename!r} points outside the archive")
            destination = target.joinpath(*parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out)
    return target


def _copy_files(source, target):
    count = size = 0
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not os.path.islink(os.path.join(folder, d)))
        for name in files:
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file() or path.suffix != ".py":  # no bytecode, no C extension
                continue
            count, size = count + 1, size + path.stat().st_size
            if count > SUBMISSION_FILES or size > SUBMISSION_BYTES:
                raise GradeError(f"{source}: more than {SUBMISSION_FILES} files or {SUBMISSION_BYTES >> 20} MiB. "
                                 "Fix: submit only the minilora/ folder")
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)


# ---- the hybrid package -----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _instructor_files():
    """{relative path: (text, regions)} of the instructor's files that hold solution fences."""
    root = package_root()
    paths = sorted({path for paths in solution_files(root).values() for path in paths})
    files = {}
    for relative in paths:
        text = (root.parent / relative).read_text(encoding="utf-8")
        files[relative] = (text, find_regions(text, relative))
    return files


def _replace_bodies(text, regions, bodies):
    """``text`` with the body of each region i in ``bodies`` ({i: text}) replaced."""
    lines = text.splitlines(keepends=True)
    for i in sorted(bodies, reverse=True):
        region = regions[i]
        lines[region.start_line:region.end_line - 1] = [bodies[i]]
    return "".join(lines)


def _student_regions(text):
    """({number: [Region]}, damaged numbers) of a submission's file, read leniently: a damaged marker
    (unclosed, unmatched, retitled, malformed) costs only the exercise it belongs to."""
    regions, damaged, open_ = {}, set(), None
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines, 1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_:
                damaged.add(open_[1])
            number = int(begin.group(3))
            if number not in _TITLES or begin.group(4) != _TITLES[number]:
                damaged.add(number)
            open_ = (n, number, begin)
        elif end:
            number = int(end.group(3))
            if open_ and open_[1] == number:
                first, _, match = open_
                regions.setdefault(number, []).append(
                    Region(number, "exercise", first, n, "".join(lines[first:n - 1]), match.group(4), match.group(1)))
            else:
                damaged.update({number} | ({open_[1]} if open_ else set()))
            open_ = None
        elif MARKER.search(line) and line.lstrip().startswith("#"):
            damaged.update(int(d) for d in re.findall(r"\d+", line)[:1])
    if open_:
        damaged.add(open_[1])
    return regions, damaged


def splice(package, keep):
    """The fenced files of the hybrid package: ({relative path: text}, {exercise: problem}).

    ``package`` is the submission's minilora folder; the regions of the exercises in ``keep`` keep the
    submission's code, every other region gets the instructor's. Where a file's markers are damaged,
    the instructor's file is the base instead, with the submission's code of ``keep`` spliced in where
    that exercise's own markers are intact; each exercise whose markers are damaged gets a problem.
    """
    sources, problems = {}, {}
    for relative, (ours, our_regions) in _instructor_files().items():
        numbers = Counter(r.number for r in our_regions)
        try:
            text = (package.parent / relative).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            problems.update({n: f"{relative} cannot be read from the submission ({type(error).__name__})" for n in numbers})
            sources[relative] = ours
            continue
        theirs, damaged = _student_regions(text)
        damaged |= {n for n in numbers if len(theirs.get(n, ())) != numbers[n]}
        for n in sorted(damaged & set(numbers)):
            problems[n] = (f"the markers of exercise {n} in {relative} are damaged: it should hold {numbers[n]} "
                           f"region(s) between '# BEGIN EXERCISE {n} \"{_TITLES[n]}\"' and '# END EXERCISE {n}' lines, "
                           f"{len(theirs.get(n, ()))} are intact. Fix: put those lines back as the student copy had them")
        seen = Counter()
        if not damaged and not set(theirs) - set(numbers):
            ordered = sorted((r for rs in theirs.values() for r in rs), key=lambda r: r.start_line)
            bodies = {}
            for i, region in enumerate(ordered):
                bodies[i] = None if region.number in keep else _nth(our_regions, region.number, seen[region.number]).body
                seen[region.number] += 1
            sources[relative] = _replace_bodies(text, ordered, {i: b for i, b in bodies.items() if b is not None})
        else:
            kept = {}
            for i, region in enumerate(our_regions):
                if region.number in keep and region.number not in damaged:
                    kept[i] = theirs[region.number][seen[region.number]].body
                seen[region.number] += 1
            sources[relative] = _replace_bodies(ours, our_regions, kept)
    return sources, problems


def _nth(regions, number, n):
    return [r for r in regions if r.number == number][n]


def build_hybrid(package, number, root):
    """Write exercise ``number``'s hybrid package into ``root``/minilora; the problem that fails it, or None."""
    sources, problems = splice(package, {number})
    if number in problems:
        return problems[number]
    target = root / "minilora"
    shutil.copytree(package, target)
    for relative, text in sources.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    assignment = target / "assignment"
    shutil.rmtree(assignment, ignore_errors=True)
    source = package_root() / "assignment"
    instructor_only = {Path(p).name for p in INSTRUCTOR_ONLY}
    shutil.copytree(source, assignment, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or n.endswith(".pyc") or n in instructor_only or n.startswith("grade_")])
    return None


def solution_copy(copy):
    """Fill every exercise region of the student copy ``copy`` (a folder holding minilora/) with the instructor's code."""
    package = Path(copy) / "minilora"
    sources, problems = splice(package, keep=set())
    if problems:
        raise ValueError(f"{copy}: {next(iter(problems.values()))}")
    for relative, text in sources.items():
        (package.parent / relative).write_text(text, encoding="utf-8")


# ---- the child process -------------------------------------------------------------------------
@dataclasses.dataclass
class _Outcome:
    data: bytes
    output: str
    status: int | None
    stopped: str | None  # why the grader stopped the child, if it did


def _python_paths():
    """The folders the child needs on sys.path (the standard library and site-packages, where NumPy is)."""
    base = os.path.realpath(sys.base_prefix) + os.sep
    found = [p for p in sys.path if p and os.path.realpath(p).startswith(base)]  # the standard library
    found += site.getsitepackages() + [os.path.dirname(os.path.dirname(np.__file__))]
    return list(dict.fromkeys(os.path.realpath(p) for p in found if os.path.exists(p)))


def _instructor_packages():
    """Every minilora folder this Python can import (the editable install's target included): the child reads none."""
    packages = {os.path.realpath(package_root())}
    for finder in sys.meta_path:  # an editable install maps the name to its source folder
        mapping = getattr(sys.modules.get(type(finder).__module__), "MAPPING", None)
        if isinstance(mapping, dict) and isinstance(mapping.get("minilora"), str):
            packages.add(os.path.realpath(mapping["minilora"]))
    for entry in sys.path:
        if entry and os.path.isfile(os.path.join(entry, "minilora", "__init__.py")):
            packages.add(os.path.realpath(os.path.join(entry, "minilora")))
    return sorted(packages)


def _environment(work):
    env = {"PATH": os.defpath, "HOME": work, "TMPDIR": work, "LC_ALL": "C.UTF-8", "MINILORA_REFERENCE_OPS": "1",
           "MINILORA_BACKEND": "numpy", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if "OPENBLAS_CORETYPE" in os.environ:  # the machine's setting for OpenBLAS, left as it is
        env["OPENBLAS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    return env


def _run_child(number, cases, root, timeout):
    """Run exercise ``number``'s ``cases`` on the hybrid package in ``root``; what came back (an _Outcome)."""
    work = root / "work"
    work.mkdir()
    read_fd, write_fd = os.pipe()
    token = secrets.token_hex(16)
    # The child reads only its own folder and Python: not the instructor's files, a wheel of them, the other
    # children's hybrids (which hold the instructor's code of this exercise), or other submissions.
    config = {"sys_path": [os.path.realpath(root)] + _python_paths(), "package_root": os.path.realpath(root),
              "result_fd": write_fd, "python_paths": _python_paths(),
              "packages": _instructor_packages(),
              "work": os.path.realpath(work), "memory_bytes": MEMORY_BYTES, "cpu_seconds": int(timeout) + 2,
              "file_bytes": FILE_BYTES}
    payload = pickle.dumps({"number": number, "token": token, "cases": [(c.name, c.inputs, c.smooth) for c in cases]})
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", WORKER_SOURCE, json.dumps(config)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 pass_fds=(write_fd,), cwd=work, env=_environment(str(work)), start_new_session=True)
    finally:
        os.close(write_fd)
    threading.Thread(target=_feed, args=(child.stdin, payload), daemon=True).start()
    data, output, stopped = _collect(child, read_fd, time.monotonic() + timeout, timeout)
    try:
        os.killpg(child.pid, signal.SIGKILL)  # the child's whole session, whatever it started
    except ProcessLookupError:
        pass
    status = child.wait()
    return _Outcome(data, output.decode("utf-8", "replace"), status, stopped)


def _feed(stream, payload):
    try:
        stream.write(payload)
        stream.close()
    except OSError:  # the child died before reading its cases: its outcome says so
        pass


def _collect(child, read_fd, deadline, timeout):
    """Read the child's results and output until both pipes close, the deadline passes, or a limit is crossed."""
    data, output, printed, stopped = bytearray(), bytearray(), 0, None
    with selectors.DefaultSelector() as selector, os.fdopen(read_fd, "rb", buffering=0) as results:
        selector.register(results, selectors.EVENT_READ, "results")
        selector.register(child.stdout, selectors.EVENT_READ, "output")
        while selector.get_map() and stopped is None:
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = f"stopped after the time limit of {timeout:g} s (an infinite loop, or far too slow)"
                break
            for key, _ in selector.select(left):
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data == "results":
                    data += chunk
                    if len(data) > RESULT_BYTES:
                        stopped = f"stopped: its results passed {RESULT_BYTES >> 20} MiB"
                else:
                    output += chunk[:max(0, KEPT_OUTPUT - len(output))]
                    printed += len(chunk)
                    if printed > OUTPUT_BYTES:
                        stopped = f"stopped: your code printed more than {OUTPUT_BYTES >> 20} MiB"
    child.stdout.close()
    return bytes(data), bytes(output), stopped


# ---- reading and judging what came back -------------------------------------------------------
def _frames(data):
    """The .npz frames of ``data`` as dicts of arrays; a ValueError if the stream is malformed."""
    frames, at = [], 0
    while at < len(data):
        if at + 8 > len(data):
            raise ValueError("a truncated frame")
        size = int.from_bytes(data[at:at + 8], "big")
        body = data[at + 8:at + 8 + size]
        if len(body) != size:
            raise ValueError("a truncated frame")
        at += 8 + size
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            if sum(info.file_size for info in npz.zip.infolist()) > RESULT_BYTES:
                raise ValueError("a frame too large")
            frames.append({key: npz[key] for key in npz.files})
    return frames


def _text(frame, key):
    return str(frame[key][()]) if key in frame else ""


def _error_message(number, frame):
    kind, message, where = _text(frame, "type"), _text(frame, "message"), _text(frame, "where")
    if kind == "NotImplementedError" and message.startswith(f"Exercise {number} ("):
        return "not implemented yet (the exercise still raises its NotImplementedError)"
    if kind == "SystemExit":
        return f"your code called sys.exit({message})"
    return f"your code raised {kind}: {message}" + (f" (at {where})" if where else "")


_expected, _expected_lock = {}, threading.Lock()  # minilora's grad mode is global: one exercise at a time


def expected_results(number):
    """The instructor's run_case results for every case of exercise ``number``, computed in this process (cached)."""
    with _expected_lock:
        if number not in _expected:
            package = importlib.import_module(__name__.split(".")[0])
            with package.backend.using_backend("numpy"):
                _expected[number] = tuple(checks.run_case(package, number, case) for case in checks.cases(number))
        return _expected[number]


def _answers(data):
    """(answers {case index: frame}, the end frame's count or None, the fatal frame or None) from the child's
    stream; a ValueError if anything in it is malformed (the student's code can write to the pipe too)."""
    try:
        frames = _frames(data)
        kinds = [_text(frame, "kind") for frame in frames]
        answers = {}
        for kind, frame in zip(kinds, frames):
            if kind in ("case", "error"):
                answers.setdefault(int(frame["index"]), frame)
                if kind == "case":
                    frame["keys"] = [str(key) for key in frame["keys"].reshape(-1)]
        count = int(frames[-1]["count"]) if kinds and kinds[-1] == "end" and kinds.count("end") == 1 else None
        fatal = frames[kinds.index("fatal")] if "fatal" in kinds else None
    except Exception as error:  # noqa: BLE001  whatever the stream holds
        raise ValueError(f"the grading process sent a malformed result ({type(error).__name__}: {error})") from None
    return answers, count, fatal


def _judge(number, cases, outcome):
    """(case results, problem) for exercise ``number`` from the child's ``outcome``."""
    try:
        answers, count, fatal = _answers(outcome.data)
    except ValueError as error:
        return [], str(error)
    if fatal is not None:
        return [], f"the package does not import: {_error_message(number, fatal)}"
    results = []
    for index, case in enumerate(cases):
        frame = answers.get(index)
        if frame is None:
            message = "did not run"
        elif _text(frame, "kind") == "error":
            message = _error_message(number, frame)
        else:
            actual = {key: frame.get(f"v{i}") for i, key in enumerate(frame["keys"])}
            message = checks.judge(number, case, actual, expected_results(number)[index])
        results.append(CaseResult(case.name, message))
    if outcome.stopped:
        return results, f"the grader {outcome.stopped}"
    if count != len(cases) or outcome.status != 0:
        return results, (f"the grading process ended without finishing its {len(cases)} cases (exit status "
                         f"{outcome.status}): your code exited (os._exit), crashed, hit the memory limit, or wrote "
                         "to the grader's pipe")
    return results, None


def grade_exercise(package, number, timeout=TIMEOUT):
    """Grade exercise ``number`` of the submission's minilora folder ``package``: an ExerciseResult."""
    e = exercise(number)
    start = time.monotonic()
    cases = checks.cases(number)
    with tempfile.TemporaryDirectory(prefix=f"minilora-grade-{number}-") as folder:
        root = Path(folder)
        problem = build_hybrid(package, number, root)
        if problem:
            return ExerciseResult(e.number, e.title, e.points, [], problem, time.monotonic() - start)
        outcome = _run_child(number, cases, root, timeout)
    results, problem = _judge(number, cases, outcome)
    return ExerciseResult(e.number, e.title, e.points, results, problem, time.monotonic() - start,
                          outcome.output)


def grade(submission, numbers=None, timeout=TIMEOUT, jobs=None):
    """Grade the submission (a student copy's folder, or a .zip of it): [ExerciseResult], one per exercise.

    numbers: which exercises (default: all). jobs: how many children run at a time (default: the CPU count).
    """
    numbers = tuple(numbers) if numbers else tuple(e.number for e in EXERCISES)
    jobs = jobs or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="minilora-submission-") as scratch:
        package = open_submission(submission, Path(scratch))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(lambda n: grade_exercise(package, n, timeout), numbers))


# ---- reports --------------------------------------------------------------------------------------
def table(results):
    """The results as a table: exercise, points, passed cases, score, first failure."""
    lines = [f"{'#':>3}  {'exercise':<38} {'points':>6} {'passed':>7} {'score':>6}  first failure"]
    for r in results:
        failure = (r.first_failure or "").replace("\n", " ")
        failure = failure if len(failure) <= 100 else failure[:97] + "..."
        lines.append(f"{r.number:>3}  {r.title:<38} {r.points:>6} {f'{r.passed_cases}/{len(r.cases)}':>7} "
                     f"{r.score:>6}  {failure}")
    total, most = sum(r.score for r in results), sum(r.points for r in results)
    lines.append(f"{'':>3}  {'total':<38} {most:>6} {'':>7} {total:>6}  ({100 * total / max(most, 1):.0f} %)")
    return "\n".join(lines)


def results_json(results, seconds):
    """Gradescope's results.json (gradescope-autograders.readthedocs.io, "Autograder Specifications")."""
    total, most = sum(r.score for r in results), sum(r.points for r in results)
    return {
        "score": total,
        "max_score": most,
        "execution_time": round(seconds, 1),
        "output": f"{total} of {most} points. Each exercise scores its points when all of its cases pass.",
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": [{"name": f"Exercise {r.number}: {r.title}", "number": str(r.number), "score": r.score,
                   "max_score": r.points, "status": "passed" if r.passed else "failed", "output": r.report(),
                   "visibility": "visible"} for r in results],
    }


# ---- the command --------------------------------------------------------------------------------
def register(actions, add_subparser):
    """Add ``grade`` to ``minilora assignment``'s actions (assignment/cli.py calls this where the grader is installed)."""
    parser = add_subparser(actions, "grade", help="grade a student's submission (instructors)",
                           description="Grade a submission: each exercise runs in its own sandboxed process against "
                                       "the values this installation computes; prints a table and writes Gradescope's "
                                       "results.json with --json. Exit status 0 whatever the score.")
    parser.add_argument("submission", metavar="SUBMISSION", help="the student's copy (a folder, or a .zip of it)")
    parser.add_argument("--json", metavar="PATH", help="write Gradescope's results.json here (replaced atomically)")
    parser.add_argument("--exercises", default=None, help="which exercises to grade, e.g. 1,3-7 (default: all)")
    parser.add_argument("--timeout", type=positive_float, default=TIMEOUT,
                        help=f"seconds per exercise (default: {TIMEOUT:g})")
    parser.set_defaults(run=run_grade)


def run_grade(args):
    try:
        numbers = parse_numbers(args.exercises) if args.exercises else None
    except ValueError as error:
        raise GradeError(str(error)) from error
    start = time.monotonic()
    try:
        results = grade(args.submission, numbers, args.timeout)
    except GradeError as error:  # the student still sees why, on Gradescope, in a results.json that scores 0
        if args.json:
            most = sum(e.points for e in EXERCISES if numbers is None or e.number in numbers)
            _write_json(args.json, {"score": 0, "max_score": most, "output": f"Not graded: {error}",
                                               "visibility": "visible", "tests": []})
        raise
    seconds = time.monotonic() - start
    print(table(results))
    print(f"graded in {seconds:.1f} s")
    if args.json:
        _write_json(args.json, results_json(results, seconds))


def _write_json(path, results):
    try:
        save_json(path, results)
    except OSError as error:
        raise GradeError(f"--json {path}: cannot write it ({error.strerror})") from error
