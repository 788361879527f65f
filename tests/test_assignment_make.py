"""``minilora assignment make``: a student copy that installs, imports, works where it can, and holds no solution.

A copy is loaded in this process under a name of its own (``student_all`` ...),
so that its package and the instructor's live side by side; every module of
minilora imports its siblings relatively, which makes that possible.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minilora.assignment import checks, make as make_module
from minilora.assignment.exercises import EXERCISES, exercise, fenced_files, find_regions, package_root
from minilora.assignment.make import OutputExists, make
from minilora.assignment.student import check_exercise

ROOT = package_root().parent
TODO = [e.number for e in EXERCISES if not e.worked]
FENCE = re.compile(r"^\s*#\s*(BEGIN|END)\s+SOLUTION\b", re.MULTILINE)


def load(folder, name):
    """The copy's ``minilora`` package in ``folder``, imported as ``name`` (without writing bytecode into it)."""
    spec = importlib.util.spec_from_file_location(name, folder / "minilora/__init__.py",
                                                  submodule_search_locations=[str(folder / "minilora")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


def run(*command, cwd=None, path=None, timeout=120, **environment):
    env = dict(os.environ, PYTHONPATH=str(path) if path else os.environ.get("PYTHONPATH", ""), PYTHONDONTWRITEBYTECODE="1",
               **environment)
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=cwd or path, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    """A student copy with every exercise blanked (the default)."""
    return make(tmp_path_factory.mktemp("blank") / "copy")


@pytest.fixture(scope="module")
def engine_done(tmp_path_factory):
    """A copy in which only exercises 6 (Mul and Div) and 13 (softmax) are blanked: the engine works."""
    return make(tmp_path_factory.mktemp("engine") / "copy", [6, 13])


# ---- what the copy holds ---------------------------------------------------------------------
def copy_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_the_copy_holds_the_package_its_tests_docs_and_project_files(blank):
    files = copy_files(blank)
    assert {"pyproject.toml", "README.md", "tests/test_exercises.py", "docs/derivations.md",
            "minilora/assignment/handout.py", "minilora/fused/__init__.py"} <= set(files)
    assert [f for f in files if f.startswith("tests/")] == ["tests/test_exercises.py"]
    assert [f for f in files if f.startswith("minilora/fused/")] == ["minilora/fused/__init__.py"]
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".pyo"))]
    assert not set(make_module.INSTRUCTOR_ONLY) & set(files)
    readme = (blank / "README.md").read_text()
    assert "pip install -e" in readme and "minilora assignment check 6" in readme and "## Submit" in readme


def _code(line):
    return line.split("  #")[0].strip()


def _solution_lines():
    """(lines, code): the stripped lines of the non-worked exercises' solutions, and their code (without the
    comment), that appear nowhere else in the package's source and are long enough (20 characters) to be the
    solution's own, not a generic line such as ``for g in grads:``."""
    inside, outside = set(), set()
    for relative in fenced_files():
        text = (ROOT / relative).read_text(encoding="utf-8")
        covered = set()
        for region in find_regions(text, relative):
            covered.update(range(region.start_line - 1, region.end_line))
            if not exercise(region.number).worked:
                inside.update(line.strip() for line in region.body.splitlines())
        outside.update(line.strip() for i, line in enumerate(text.splitlines()) if i not in covered)
    lines = {line for line in inside - outside if len(line) >= 20}
    code = {_code(line) for line in inside} - {_code(line) for line in outside}
    return lines, {c for c in code if len(c) >= 20}


def test_the_copy_holds_no_solution(blank):
    lines, code = _solution_lines()
    assert len(lines) > 120 and len(code) > 80
    source = (ROOT / "minilora/functional/norm.py").read_text()
    assert lines & {line.strip() for line in source.splitlines()} and [c for c in code if c in source]  # the scan sees
    for relative in copy_files(blank):
        text = (blank / relative).read_text(encoding="utf-8")
        assert not FENCE.search(text), f"{relative} keeps a SOLUTION fence"
        leaked = lines & {line.strip() for line in text.splitlines()}
        assert not leaked, f"{relative} holds solution lines: {sorted(leaked)[:3]}"
        inlined = [c for c in code if c in text]  # in a docstring, a comment, a doc
        assert not inlined, f"{relative} holds solution code: {inlined[:3]}"


def test_every_blanked_region_is_a_stub_between_exercise_markers(blank):
    found = {}
    for relative in copy_files(blank):
        if relative.endswith(".py") and not relative.startswith("minilora/assignment/"):
            for region in find_regions((blank / relative).read_text(encoding="utf-8"), relative):
                assert region.kind == "exercise"
                found.setdefault(region.number, []).append(region.body)
    assert sorted(found) == [e.number for e in EXERCISES]
    for number in TODO:
        e = exercise(number)
        for body in found[number]:
            assert body.lstrip().startswith("raise NotImplementedError(") and f"Exercise {number} ({e.title})" in body
    assert all("NotImplementedError" not in body for n in (5, 10) for body in found[n])


# ---- it installs, imports and works where it can ---------------------------------------------
def test_each_stub_raises_not_implemented_with_its_number_and_title(tmp_path):
    for number in TODO:
        package = load(make(tmp_path / f"copy{number}", [number]), f"student_only_{number}")
        e = exercise(number)
        with pytest.raises(NotImplementedError, match=re.escape(f"Exercise {number} ({e.title}): implement")):
            for case in checks.cases(number):
                checks.run_case(package, number, case)


def test_what_needs_no_exercise_still_works_in_a_blank_copy(blank):
    package = load(blank, "student_blank")
    F, lora = package.functional, importlib.import_module("student_blank.lora")
    x = package.Tensor(np.arange(6.0).reshape(2, 3))
    assert np.allclose(F.softmax(x).numpy().sum(-1), 1) and F.layer_norm(x).shape == (2, 3)
    assert F.cross_entropy(x, [0, 2]).item() > 0 and F.matmul(x, x.T).shape == (2, 2)
    assert lora.LoraConfig(r=4).r == 4
    assert importlib.import_module("student_blank.optim").warmup_cosine(0, 10, 100, 1.0) == 0.1
    assert importlib.import_module("student_blank.analysis").linear_layer_costs(8, 8, 2, 4)["trainable_lora"] == 32
    with pytest.raises(NotImplementedError, match="Exercise 3 \\(The backward loop\\)"):
        F.mul(package.Tensor(np.ones(2), requires_grad=True), 2.0).sum().backward()


def test_worked_examples_pass_and_missing_work_is_named(engine_done):
    package = load(engine_done, "student_engine_done")
    assert check_exercise(package, 5)[0] and check_exercise(package, 10)[0] and check_exercise(package, 8)[0]
    passed, report = check_exercise(package, 6)
    assert not passed and "not implemented yet: the backward of Mul and Div" in report and "Hint:" in report
    passed, report = check_exercise(package, 16)
    assert not passed and "exercise 16 uses exercise 13 (Softmax and log-softmax backward), which is not done yet" in report


def test_the_copy_pip_installs_and_its_command_runs(engine_done, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           "--target", str(site), str(engine_done)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    listed = run("-m", "minilora.cli", "assignment", "list", cwd=tmp_path, path=site)
    assert listed.returncode == 0 and "Mul and Div backward" in listed.stdout, listed.stderr
    imported = run("-c", "import minilora; print(minilora.__file__)", cwd=tmp_path, path=site)
    assert imported.stdout.startswith(str(site))


def test_the_student_tests_run_one_exercise(engine_done):
    done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "-k", "exercise05 or exercise06", cwd=engine_done,
               path=engine_done)
    assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert "not implemented yet" in done.stdout


# ---- writing OUT -----------------------------------------------------------------------------
def test_make_refuses_a_folder_that_is_not_empty_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists, match="exists and is not empty. Fix: pick a new folder, or pass --force"):
        make(out)
    assert copy_files(out) == ["notes.txt"]
    make(out, [6], force=True)
    assert "notes.txt" not in copy_files(out) and (out / "pyproject.toml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExists, match="is a file"):
        make(tmp_path / "file")


def test_only_python_source_ships(tmp_path, monkeypatch):
    source = tmp_path / "src/minilora"
    shutil.copytree(package_root(), source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "analysis.py.orig").write_text("a backup, with the solutions")
    monkeypatch.setattr(make_module, "package_root", lambda: source)
    files = copy_files(make(tmp_path / "out"))
    assert "minilora/analysis.py.orig" not in files and "minilora/analysis.py" in files


def test_a_failed_make_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(root, numbers):
        raise OSError("disk full")
    monkeypatch.setattr(make_module, "_write_project_files", broken)
    with pytest.raises(OSError, match="disk full"):
        make(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_make_command_reports_and_refuses(tmp_path):
    done = run("-m", "minilora.cli", "assignment", "make", str(tmp_path / "out"), "--exercises", "6,7-8")
    assert done.returncode == 0 and "exercises 6-8 blanked out" in done.stdout, done.stderr
    again = run("-m", "minilora.cli", "assignment", "make", str(tmp_path / "out"))
    assert again.returncode == 2 and "error:" in again.stderr and "--force" in again.stderr
    bad = run("-m", "minilora.cli", "assignment", "make", str(tmp_path / "other"), "--exercises", "0")
    assert bad.returncode == 2 and "there is no exercise 0" in bad.stderr


# ---- minilora assignment check ---------------------------------------------------------------
def test_check_passes_on_the_full_package():
    done = run("-m", "minilora.cli", "assignment", "check", "7")
    assert done.returncode == 0 and "2 of 2 cases passed" in done.stdout, done.stdout + done.stderr


def test_check_reports_a_stub_and_an_exercise_not_done_yet(blank):
    stub = run("-m", "minilora.cli", "assignment", "check", "1", path=blank)
    assert stub.returncode == 1 and "not implemented yet" in stub.stdout and "Hint:" in stub.stdout
    blocked = run("-m", "minilora.cli", "assignment", "check", "6", path=blank)
    assert blocked.returncode == 1 and "exercise 6 uses exercise 3 (The backward loop), which is not done yet" in blocked.stdout


def test_check_explains_a_wrong_answer(tmp_path):
    copy = make(tmp_path / "copy", [6])
    elementwise = copy / "minilora/functional/elementwise.py"
    mul, div = [r for r in find_regions(elementwise.read_text(), "copy") if r.number == 6]
    solved_div = [r for r in find_regions((ROOT / "minilora/functional/elementwise.py").read_text(), "source") if r.number == 6][1]
    lines = elementwise.read_text().splitlines(keepends=True)
    lines[div.start_line:div.end_line - 1] = [solved_div.body]
    lines[mul.start_line:mul.end_line - 1] = ["        return dy * ctx.a, dy * ctx.a  # the product rule, misread\n"]
    elementwise.write_text("".join(lines))
    done = run("-m", "minilora.cli", "assignment", "check", "6", path=copy)
    assert done.returncode == 1
    assert "FAIL  same shapes (3, 4)" in done.stdout and "inputs: mul_a (3, 4), mul_b (3, 4)" in done.stdout
    assert "the gradient of mul_a disagrees with the numerical gradient of your own forward" in done.stdout
    assert "exercise 6 does not pass yet" in done.stderr


def test_teaching_md_lists_every_exercise_with_its_points():
    text = (ROOT / "docs/teaching.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| (.+?) \| (\d+) \| .+ \|$", text, re.MULTILINE)
    assert [(int(n), title, int(points)) for n, title, points in rows] == [
        (e.number, e.title + (" (worked)" if e.worked else ""), e.points) for e in EXERCISES]
    assert f"{sum(e.points for e in EXERCISES)} points in all" in text


def test_a_student_on_a_cupy_machine_still_works_on_numpy(engine_done, tmp_path):
    """MINILORA_BACKEND=cupy set on the student's machine changes nothing, and CuPy is never imported: here a
    cupy that ends the process with status 99 the moment it is imported."""
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("import os\nos._exit(99)\n")
    path = os.pathsep.join([str(tmp_path), str(engine_done)])
    checked = run("-m", "minilora.cli", "assignment", "check", "5", cwd=engine_done, path=path, MINILORA_BACKEND="cupy")
    assert checked.returncode == 0 and "2 of 2 cases passed" in checked.stdout, checked.stdout + checked.stderr
    tested = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "-k", "exercise05", cwd=engine_done, path=path,
                 MINILORA_BACKEND="cupy")
    assert "1 passed" in tested.stdout, tested.stdout + tested.stderr
