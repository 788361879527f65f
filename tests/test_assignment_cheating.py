"""Cheating does not pay: each cheating submission scores nothing for the exercise it cheats in,
and the other exercise graded with it still scores.

Each cheat replaces exercise 6's first region (Mul.backward) in a full-solution student copy;
exercise 7 is graded beside it and must pass. Where a cheat would work without the grader's
defences (reading or importing the instructor's files), the test shows that first, in this process.
"""
import importlib
import importlib.machinery
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from minilora.assignment import grade as grading
from minilora.assignment.exercises import package_root

from planted_bugs import region_copy, student_copies

CHEAT, OTHER = 6, 7
SOLUTION_FILE = package_root() / "functional" / "elementwise.py"
ZERO = "return dy * 0, dy * 0\n"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return student_copies(tmp_path_factory.mktemp("copies"))[1]


def grade_cheat(copy, timeout=grading.TIMEOUT):
    results = {r.number: r for r in grading.grade(copy, [CHEAT, OTHER], timeout)}
    assert results[OTHER].passed, results[OTHER].report()
    assert results[CHEAT].score == 0 and results[CHEAT].first_failure
    return results[CHEAT]


def test_reading_expected_values_finds_nothing(full, tmp_path):
    """The expected values exist only in the grader's process: not in the child's files, memory, or the parent's /proc."""
    body = f"""
        import gc, glob, os, sys
        seen = []
        for pattern in ("*", "../*", "../../*", "/tmp/*", "/tmp/*/*", "/tmp/*/*/*"):
            try:
                seen += [p for p in glob.glob(pattern) if "expected" in p or p.endswith((".npz", ".json"))]
            except OSError:
                pass
        for name in ("mem", "environ", "cmdline", "maps"):
            try:
                open(f"/proc/{{os.getppid()}}/{{name}}", "rb").read(1)
                seen.append(name)
            except OSError as error:
                print("refused:", name, error)
        def values(names):  # the expected values would be a dict of arrays, or a tuple of such dicts
            return [n for n, v in names.items() if "expected" in n.lower() and isinstance(v, (dict, tuple, list))]
        frame = sys._getframe()
        while frame is not None:
            seen += values(frame.f_locals) + values(frame.f_globals)
            frame = frame.f_back
        for module in list(sys.modules.values()):
            seen += values(vars(module))
        try:
            seen += [type(o).__name__ for o in gc.get_objects() if isinstance(o, dict) and "expected" in o]
        except PermissionError as error:
            print("refused:", error)
        print("FOUND", seen)
        {ZERO}"""
    result = grade_cheat(region_copy(full, tmp_path, CHEAT, body))
    assert "FOUND []" in result.output, result.output
    assert "refused: mem" in result.output and "gc.get_objects" in result.output


def test_patching_the_checks_in_process_changes_nothing(full, tmp_path):
    body = f"""
        import numpy
        import minilora.assignment.checks as checks
        import minilora.assignment.judging as judging
        checks.judge = lambda *args, **kwargs: None
        judging.compare = judging.numeric_message = lambda *args, **kwargs: None
        numpy.allclose = lambda *args, **kwargs: True
        try:
            import hypothesis  # it imports subprocess, which the child refuses
            hypothesis.given = hypothesis.settings = None
        except ImportError as error:
            print("refused:", error)
        {ZERO}"""
    result = grade_cheat(region_copy(full, tmp_path, CHEAT, body))
    assert "is wrong" in result.first_failure


def test_a_submitted_checks_module_is_not_used(full, tmp_path):
    """The submission's minilora/assignment/ is replaced by the instructor's in every hybrid."""
    rigged = ("from .judging import Case\n\ndef cases(number):\n    return []\n\n"
              "def run_case(package, number, case):\n    return {}\n\ndef judge(*args, **kwargs):\n    return None\n")
    result = grade_cheat(region_copy(full, tmp_path, CHEAT, ZERO, {"minilora/assignment/checks.py": rigged}))
    assert "is wrong" in result.first_failure


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "os._exit(0)", "raise SystemExit"])
def test_exiting_early_with_success_scores_nothing(full, tmp_path, exit_call):
    body = f"import os, sys\n{exit_call}\n"
    result = grade_cheat(region_copy(full, tmp_path, CHEAT, body))
    assert "sys.exit" in result.first_failure or "ended without finishing" in result.first_failure


def test_writing_the_results_file_is_refused_and_overwritten(full, tmp_path):
    results = tmp_path / "results" / "results.json"
    results.parent.mkdir()
    forged = {"score": 1000, "max_score": 5, "tests": []}
    body = f"""
        import json
        for target in ({str(results)!r}, "results.json", "/tmp/results.json"):
            try:
                with open(target, "w") as f:
                    json.dump({forged!r}, f)
                print("WROTE", target)
            except OSError as error:
                print("refused:", error)
        {ZERO}"""
    copy = region_copy(full, tmp_path, CHEAT, body)
    command = [sys.executable, "-c", "import sys; from minilora.cli import main; sys.exit(main(sys.argv[1:]))",
               "assignment", "grade", str(copy), "--json", str(results), "--exercises", f"{CHEAT},{OTHER}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = json.loads(results.read_text())
    assert written["score"] == 3 and written["max_score"] == 5
    scores = {t["number"]: t["score"] for t in written["tests"]}
    assert scores == {str(CHEAT): 0, str(OTHER): 3}
    assert not Path("/tmp/results.json").exists() or json.loads(Path("/tmp/results.json").read_text()) != forged


def _import_solution():
    import importlib.util

    spec = importlib.util.spec_from_file_location("solution", f"{package_root()}/__init__.py",
                                                  submodule_search_locations=[str(package_root())])
    module = importlib.util.module_from_spec(spec)
    sys.modules["solution"] = module
    spec.loader.exec_module(module)
    import importlib
    return importlib.import_module("solution.functional.elementwise")


IMPORT_SOLUTION = f"""
    import importlib, importlib.util, sys
    spec = importlib.util.spec_from_file_location("solution", {str(package_root() / '__init__.py')!r},
                                                  submodule_search_locations=[{str(package_root())!r}])
    module = importlib.util.module_from_spec(spec)
    sys.modules["solution"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("solution.functional.elementwise").Mul.backward(ctx, dy)
"""
READ_SOLUTION = f"""
    source = open({str(SOLUTION_FILE)!r}).read()
    exec(compile(source.split("# BEGIN SOLUTION 6")[1].split("# END SOLUTION 6")[0].split(chr(10), 1)[1]
                 .replace(chr(10) + "        ", chr(10)).strip(), "x", "exec"))
    return da, db
"""
CHEATS = {
    "import-by-path": IMPORT_SOLUTION,
    "sys-path": (f"import sys\nsys.path.insert(0, {str(package_root().parent)!r})\n"
                 "for name in [m for m in sys.modules if m.startswith('minilora.functional')]:\n    del sys.modules[name]\n"
                 "import minilora.functional.elementwise as e\nreturn e.Mul.backward(ctx, dy)\n"),
    "read-source": READ_SOLUTION,
    "subprocess": f"import subprocess\nsubprocess.run(['cat', {str(SOLUTION_FILE)!r}])\n{ZERO}",
    "os-system": f"import os\nos.system('cat {SOLUTION_FILE}')\n{ZERO}",
    "ctypes": f"import ctypes\n{ZERO}",
    "pathlib-read": f"import pathlib\nprint(pathlib.Path({str(SOLUTION_FILE)!r}).read_text())\n{ZERO}",
    "open-a-path": f"import os, pathlib\nos.open(pathlib.Path({str(SOLUTION_FILE)!r}), os.O_RDONLY)\n{ZERO}",
    "readline-history": (f"import readline\nreadline.read_history_file({str(SOLUTION_FILE)!r})\n"
                         f"print(readline.get_history_item(1))\n{ZERO}"),
    "subinterpreter": ("import _xxsubinterpreters as interpreters\n"
                       f"interpreters.run_string(interpreters.create(), \"print(open({str(SOLUTION_FILE)!r}).read())\")\n"
                       f"{ZERO}"),
    "posixsubprocess": f"import _posixsubprocess\n{ZERO}",
    "numpy-fromfile": f"import numpy\nprint(numpy.fromfile({str(SOLUTION_FILE)!r}, dtype=numpy.uint8).tobytes())\n{ZERO}",
    "numpy-memmap": f"import numpy\nprint(numpy.memmap({str(SOLUTION_FILE)!r}, dtype=numpy.uint8, mode='r').tobytes())\n{ZERO}",
    "sqlite": f"import sqlite3\nsqlite3.connect({str(SOLUTION_FILE)!r}).execute('select 1')\n{ZERO}",
    "fork": f"import os\nif os.fork() == 0:\n    os._exit(0)\n{ZERO}",
    "exec": f"import os\nos.execv('/bin/cat', ['cat', {str(SOLUTION_FILE)!r}])\n",
    "signal-the-grader": f"import os\nos.kill(os.getppid(), 0)\n{ZERO}",  # signal 0 only asks; the hook refuses any
    "socket": f"import socket\nsocket.socket()\n{ZERO}",
    "symlink": f"import os\nos.symlink({str(SOLUTION_FILE)!r}, 'solution.py')\n{ZERO}",
}


def test_the_solution_cheats_would_work_without_the_sandbox():
    """In this process (no sandbox) the instructor's solution can be imported and read: the grader's child stops it."""
    assert _import_solution().Mul is not None
    assert "# BEGIN SOLUTION 6" in SOLUTION_FILE.read_text()


@pytest.mark.parametrize("name", CHEATS)
def test_reaching_the_instructors_solution_or_the_system_is_refused(full, tmp_path, name):
    result = grade_cheat(region_copy(full, tmp_path, CHEAT, CHEATS[name]))
    assert "PermissionError" in result.first_failure or "ImportError" in result.first_failure, result.first_failure


def test_reading_any_file_outside_its_folder_is_refused(full, tmp_path):
    """On Gradescope the instructor's wheel sits in /autograder/source: the child reads only its folder and Python."""
    wheel = tmp_path / "source" / "minilora-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(SOLUTION_FILE.read_bytes())
    body = f"""
        import os
        for action in (lambda: open({str(wheel)!r}, "rb").read(), lambda: os.listdir({str(wheel.parent)!r}),
                       lambda: open("/etc/passwd").read()):
            try:
                action()
                print("READ")
            except PermissionError as error:
                print("refused:", error)
        {ZERO}"""
    result = grade_cheat(region_copy(full, tmp_path, CHEAT, body))
    assert "READ" not in result.output, result.output
    for refused in (f"reading {wheel}", f"listing {wheel.parent}", "reading /etc/passwd"):
        assert f"the grader does not allow {refused}" in result.output


@pytest.mark.parametrize("forged", ["garbage", "a frame with a bad index", "an early end frame"])
def test_forging_frames_on_the_result_pipe_scores_nothing(full, tmp_path, forged):
    """The student's code can find the pipe (its number is in sys.argv): what it writes there is judged, never trusted."""
    frames = {
        "garbage": "os.write(fd, (16).to_bytes(8, 'big') + b'x' * 16)",
        "a frame with a bad index": "send(kind='case', index=numpy.arange(3), keys=numpy.array(['out']))",
        "an early end frame": "send(kind='end', token='guess', count=4)",
    }
    body = f"""
        import io, json, os, sys, numpy
        fd = json.loads(sys.argv[1])["result_fd"]
        def send(**arrays):
            buffer = io.BytesIO()
            numpy.savez(buffer, **arrays)
            os.write(fd, len(buffer.getvalue()).to_bytes(8, "big") + buffer.getvalue())
        {frames[forged]}
        {ZERO}"""
    result = grade_cheat(region_copy(full, tmp_path, CHEAT, body))
    assert any(words in result.first_failure for words in ("malformed", "ended without finishing")), result.first_failure


def _a_standard_extension():
    """(name, path) of a standard C extension that is a file here: which ones are built in varies between builds
    (_bisect is a file on this CPython, built into Ubuntu's 3.12)."""
    for name in ("_bisect", "_json", "_csv", "_struct", "_random", "_heapq", "_decimal", "_ssl", "select"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "__file__", "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return name, Path(module.__file__)
    pytest.fail(f"no standard C extension is a file on this Python ({sys.version}); add one to the list")


def test_a_c_extension_cannot_be_brought_in(full, tmp_path):
    """Native code would get around the audit hook: a .so in the submission is not copied, and one written at run
    time (here a copy of a standard one) is not loaded."""
    name, extension = _a_standard_extension()
    copy = region_copy(full, tmp_path, CHEAT, f"""
        import importlib.machinery, importlib.util, shutil
        shutil.copyfile({str(extension)!r}, "native.so")
        spec = importlib.util.spec_from_file_location(
            {name!r}, "native.so", loader=importlib.machinery.ExtensionFileLoader({name!r}, "native.so"))
        importlib.util.module_from_spec(spec)
        {ZERO}""")
    shutil.copyfile(extension, copy / "minilora" / extension.name)
    result = grade_cheat(copy)
    assert "does not allow loading the C extension" in result.first_failure, result.first_failure
    with tempfile.TemporaryDirectory() as scratch:
        package = grading.open_submission(copy, Path(scratch))
        assert not list(package.rglob("*.so")) and (package / "functional" / "elementwise.py").exists()
