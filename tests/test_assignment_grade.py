"""``minilora assignment grade``: what a student wrote fails only its own exercise; the submission's forms;
the reports (the table, Gradescope's results.json); the command's errors."""
import json
import subprocess
import sys
import zipfile

import pytest

from minilora.assignment import grade as grading
from minilora.assignment.exercises import EXERCISES, find_regions

from planted_bugs import region_copy, student_copies

BROKEN, OTHER = 6, 7  # the robustness cases break Mul.backward; Exp ... Sigmoid is graded beside it
ZERO = "return dy * 0, dy * 0\n"


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    return student_copies(tmp_path_factory.mktemp("copies"))


def grade_two(copy, timeout=grading.TIMEOUT):
    results = {r.number: r for r in grading.grade(copy, [BROKEN, OTHER], timeout)}
    assert results[OTHER].passed, results[OTHER].report()
    assert results[BROKEN].score == 0 and results[BROKEN].first_failure
    return results[BROKEN]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "import sys; from minilora.cli import main; sys.exit(main(sys.argv[1:]))",
                           "assignment", "grade", *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


# ---- what a student writes fails only that exercise ----------------------------------------------
ROBUSTNESS = {
    "exception": ("raise ValueError('my bug')\n", "your code raised ValueError: my bug (at minilora/functional/elementwise.py:"),
    "wrong-return-type": ("return 'da', 'db'\n", "your code raised"),
    "missing-module": ("import no_such_module_for_grading\n" + ZERO, "ModuleNotFoundError: No module named"),
    "syntax-error": ("return dy *\n", "the package does not import: your code raised SyntaxError"),
    "a-little-printing": ("print('debugging')\n" + ZERO, "is wrong"),
    "memory-bomb": ("import numpy\nhuge = numpy.ones(1 << 31)\n" + ZERO, "your code raised MemoryError"),
    "writes-a-file": ("open('scratch.txt', 'w').write('fine')\n" + ZERO, "is wrong"),
}


@pytest.mark.parametrize("name", ROBUSTNESS)
def test_a_broken_exercise_fails_alone(copies, tmp_path, name):
    body, message = ROBUSTNESS[name]
    result = grade_two(region_copy(copies[1], tmp_path, BROKEN, body))
    assert message in result.first_failure


def test_an_infinite_loop_is_stopped_at_the_time_limit(copies, tmp_path):
    result = grade_two(region_copy(copies[1], tmp_path, BROKEN, "while True:\n    pass\n"), timeout=4)
    assert "time limit of 4 s" in result.first_failure
    assert result.seconds < 15


def test_printing_a_lot_is_stopped(copies, tmp_path):
    result = grade_two(region_copy(copies[1], tmp_path, BROKEN, "while True:\n    print('x' * 10000)\n"))
    assert "printed more than" in result.first_failure


def test_what_a_child_reports_to_the_student_is_bounded(copies, tmp_path):
    """The hybrid holds the instructor's other exercises: the student sees no printing, a short first line,
    and built-in exception names only."""
    body = ("print('SOLUTION TEXT')\nclass Leak_the_solution_here(ValueError):\n    pass\n"
            "raise Leak_the_solution_here('x' * 5000 + '\\nsecond line')\n")
    result = grade_two(region_copy(copies[1], tmp_path, BROKEN, body))
    report = result.report()
    assert "SOLUTION TEXT" in result.output and "SOLUTION TEXT" not in report
    assert "Leak_the_solution_here" not in report and "ValueError (a subclass)" in report
    assert "second line" not in report and "x" * 301 not in report


# ---- the exercise markers -------------------------------------------------------------------------
def _edit(copy, old, new):
    path = copy / "minilora/functional/elementwise.py"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize("damage", ["an END line removed", "both lines of one region removed"])
def test_damaged_markers_fail_their_exercise_only(copies, tmp_path, damage):
    copy = region_copy(copies[1], tmp_path, BROKEN, "return dy * ctx.b, dy * ctx.a\n")
    _edit(copy, f"        # END EXERCISE {BROKEN}\n", "")
    if damage == "both lines of one region removed":
        _edit(copy, f'        # BEGIN EXERCISE {BROKEN} "Mul and Div backward"\n', "")
    results = {r.number: r for r in grading.grade(copy, [5, BROKEN, OTHER])}
    assert results[BROKEN].score == 0 and "EXERCISE" in results[BROKEN].first_failure
    assert "elementwise.py" in results[BROKEN].first_failure
    assert results[5].passed and results[OTHER].passed  # the same file's other exercises are still graded


def test_the_hybrid_keeps_only_its_own_exercise_of_the_submission(copies):
    """In the blank copy, exercise 6's hybrid has its stubs in 6's regions and the solution everywhere else."""
    sources, problems = grading.splice(copies[0] / "minilora", {BROKEN})
    assert not problems
    for relative, text in sources.items():
        for region in find_regions(text, relative):
            assert ("NotImplementedError" in region.body) == (region.number == BROKEN), (relative, region.number)


# ---- the submission's forms and the command -------------------------------------------------------
def test_a_zip_of_the_package_is_graded(copies, tmp_path):
    archive = tmp_path / "submission.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in (copies[1] / "minilora").rglob("*.py"):
            out.write(path, path.relative_to(copies[1]).as_posix())
    results = grading.grade(archive, [5, OTHER])
    assert all(r.passed for r in results)


def test_a_zip_with_a_path_outside_it_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("minilora/__init__.py", "")
        out.writestr("../outside.py", "x = 1")
    with pytest.raises(grading.GradeError, match="outside the archive"):
        grading.grade(archive, [5])
    assert not (tmp_path.parent / "outside.py").exists()


def test_the_command_writes_gradescope_results_and_exits_0(copies, tmp_path):
    results = tmp_path / "out" / "results.json"
    results.parent.mkdir()
    results.write_text("an older file")
    done = cli(copies[0], "--json", results, "--exercises", "5-7")
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout and "Add, Sub and Neg backward" in done.stdout
    written = json.loads(results.read_text())
    assert written["score"] == 1 and written["max_score"] == sum(e.points for e in EXERCISES if 5 <= e.number <= 7)
    assert isinstance(written["execution_time"], float) and written["visibility"] == "visible"
    tests = written["tests"]
    assert [t["number"] for t in tests] == ["5", "6", "7"]
    assert {key for t in tests for key in t} == {"name", "number", "score", "max_score", "status", "output", "visibility"}
    assert [t["status"] for t in tests] == ["passed", "failed", "failed"]
    assert "not implemented yet" in tests[1]["output"]
    assert list(results.parent.iterdir()) == [results]  # written through a temporary file, nothing left over


@pytest.mark.parametrize("target, message", [
    ("missing", "no such file or folder"), ("empty", "holds no minilora/ package"), ("file.txt", "neither a folder nor a .zip")])
def test_a_bad_submission_path_is_one_line_and_status_2(tmp_path, target, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a submission")
    done = cli(tmp_path / target)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr


def test_an_ungradable_submission_still_gets_a_results_file(tmp_path):
    """On Gradescope the student sees why: a results.json that scores 0 and says what is wrong."""
    (tmp_path / "empty").mkdir()
    done = cli(tmp_path / "empty", "--json", tmp_path / "results.json", "--exercises", "5-6")
    assert done.returncode == 2
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["score"] == 0 and written["max_score"] == 3 and "holds no minilora/ package" in written["output"]


def test_bad_exercise_numbers_are_a_usage_error(copies):
    done = cli(copies[1], "--exercises", "99")
    assert done.returncode == 2 and "there is no exercise 99" in done.stderr


def test_a_folder_holding_the_zip_is_graded(copies, tmp_path):
    """Gradescope may leave the student's upload as a .zip inside /autograder/submission."""
    (tmp_path / "submission").mkdir()
    with zipfile.ZipFile(tmp_path / "submission" / "upload.zip", "w") as out:
        for path in (copies[1] / "minilora").rglob("*.py"):
            out.write(path, path.relative_to(copies[1]).as_posix())
    assert all(r.passed for r in grading.grade(tmp_path / "submission", [5]))


def test_a_damaged_zip_is_one_line_and_status_2(tmp_path):
    archive = tmp_path / "submission.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("minilora/__init__.py", "x = 1\n" * 100)
    data = bytearray(archive.read_bytes())
    data[40:60] = b"\0" * 20  # over the member's local header: it no longer matches the directory
    archive.write_bytes(bytes(data))
    done = cli(archive)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "cannot unpack it" in done.stderr


def test_a_machine_with_lower_limits_still_grades(copies):
    """The child lowers its limits to the grader's own where those are lower (it cannot raise them)."""
    import resource

    limit = 768 << 20  # below the child's MEMORY_BYTES
    assert limit < grading.MEMORY_BYTES
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from minilora.cli import main; sys.exit(main(sys.argv[1:]))",
         "assignment", "grade", str(copies[1]), "--exercises", "5"],
        capture_output=True, text=True, timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert done.returncode == 0, done.stderr
    assert "(100 %)" in done.stdout, done.stdout
