"""``minilora assignment make OUT``: the student copy, with the chosen exercises' solutions taken out.

The copy holds:

    minilora/           the package; each chosen region's body is a NotImplementedError that
                        names the exercise and gives a hint, between BEGIN/END EXERCISE lines
    tests/              test_exercises.py: one test per exercise of the copy
    docs/               the derivations (maths, no code)
    pyproject.toml      so that ``pip install -e .`` installs it and the ``minilora`` command
    README.md           for the students: install, check, submit

Left out: everything but Python source (caches, bytecode, stray files), the fast variants (``minilora/fused/``, each
subclasses a reference op with its own backward: the solution), and the
instructor's grader (``INSTRUCTOR_ONLY``). Worked examples keep their solution.
The copy is written into a temporary folder beside OUT, then renamed, so that
OUT is never half written.
"""
import json
import shutil
import tempfile
import textwrap
from pathlib import Path

from .exercises import EXERCISES, exercise, fenced_files, find_regions, package_root

INSTRUCTOR_ONLY = ("minilora/assignment/grade.py", "minilora/assignment/worker.py")
STUDENT_DOCS = ("autograd.md", "derivations.md", "lora.md")  # derivations, no solution code (tests check it)

FUSED_STUB = '''"""The fast variants of the reference ops are not part of this copy: every op runs the reference
in minilora.functional, the code you write."""
'''

HANDOUT = '''"""Written by ``minilora assignment make``: the exercises of this copy (the chosen ones and the worked examples)."""
HANDED_OUT = {numbers!r}
'''

PYPROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "minilora"
version = "{version}"
description = "minilora, student copy: backpropagation and LoRA, one exercise at a time"
requires-python = ">=3.10"
dependencies = ["numpy>=1.24"]

[project.optional-dependencies]
test = ["pytest"]

[project.scripts]
minilora = "minilora.cli:main"

[tool.setuptools.packages.find]
include = ["minilora*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

STUDENT_TESTS = '''"""One test per exercise of this copy; ``pytest -k exercise07`` runs exercise 7's checks,
as ``minilora assignment check 7`` does."""
import pytest

import minilora
from minilora.assignment.exercises import handed_out
from minilora.assignment.student import check_exercise


@pytest.mark.parametrize("number", handed_out(), ids=lambda number: f"exercise{number:02d}")
def test_exercise(number):
    passed, report = check_exercise(minilora, number)
    assert passed, report
'''

README = '''# minilora: the assignment

minilora is LoRA built from first principles in NumPy: a hand-written autograd, the ops of a
Transformer, the optimizers and LoRA itself. In this copy some functions are blanked out: each
raises `NotImplementedError("Exercise N (...)")` with a hint, between the lines
`# BEGIN EXERCISE N` and `# END EXERCISE N`. Write your code there, and only there.

## Install

```bash
python -m venv .venv && source .venv/bin/activate
pip install -e ".[test]"
```

## Work on an exercise

```bash
minilora assignment list        # the exercises, their points, and where each one is
minilora assignment check 6     # run exercise 6's checks and see what fails, in words
pytest -k exercise06            # the same, as a test
```

`check` runs your code on small inputs. It compares your gradients with the numerical gradient
of your own forward (central differences), and checks what the rules imply (for example, that
tied maxima share the gradient equally). It tells you when an exercise uses another one that is
not done yet. Passing `check` is a good sign, not a grade: the grader also compares with the
correct values on inputs you do not see.

Work in order: the engine (1-4) comes first, since every other check runs a backward pass.
The derivations are in `docs/derivations.md`, `docs/autograd.md` and `docs/lora.md`.

## The exercises

| # | exercise | points |
|---|---|---|
{table}

## Submit

Submit the `minilora/` folder as your instructor asks (for Gradescope, a zip of it:
`python -m zipfile -c submission.zip minilora`). Do not change the function signatures or the
`BEGIN`/`END EXERCISE` lines: the grader finds your code by them.
'''


class OutputExists(Exception):
    """OUT exists and is not empty (and --force was not given), or is a file."""


def make(out, numbers=None, force=False):
    """Write the student copy to ``out`` with exercises ``numbers`` (default: all) blanked; returns its Path.

    Refuses (OutputExists) an ``out`` that is a file, or a non-empty folder unless ``force``.
    """
    out = Path(out).resolve()
    numbers = tuple(sorted({exercise(n).number for n in numbers})) if numbers else tuple(e.number for e in EXERCISES)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_copy(staging, numbers)
        _replace(out, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_out(out, force):
    if out.is_file():
        raise OutputExists(f"{out} is a file. Fix: name a folder for the student copy.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExists(f"{out} exists and is not empty. Fix: pick a new folder, or pass --force to replace it.")


def _replace(out, staging):
    """Put ``staging`` where ``out`` is, the old ``out`` (if any) going only once the new one is in place."""
    if not out.exists():
        staging.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    out.rename(old / "copy")
    staging.rename(out)
    shutil.rmtree(old)


def _write_copy(root, numbers):
    source = package_root()
    fenced = set(fenced_files(source))
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source.parent).as_posix()
        if not _ships(path, relative):
            continue
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative in fenced:
            target.write_text(student_source(path.read_text(encoding="utf-8"), relative, numbers), encoding="utf-8")
        else:
            shutil.copyfile(path, target)
    (root / "minilora/fused").mkdir()
    (root / "minilora/fused/__init__.py").write_text(FUSED_STUB, encoding="utf-8")
    graded = tuple(sorted(set(numbers) | {e.number for e in EXERCISES if e.worked}))
    (root / "minilora/assignment/handout.py").write_text(HANDOUT.format(numbers=graded), encoding="utf-8")
    _write_project_files(root, numbers)


def _ships(path, relative):
    """Whether a file of the package goes into the copy: Python source only (the package has no data files;
    a stray backup, a saved run or bytecode stays behind), and none of the instructor's."""
    if not path.is_file() or path.suffix != ".py" or "__pycache__" in path.parts:
        return False
    return relative not in INSTRUCTOR_ONLY and not relative.startswith("minilora/fused/")


def _write_project_files(root, numbers):
    from .. import __version__

    (root / "pyproject.toml").write_text(PYPROJECT.format(version=__version__), encoding="utf-8")
    rows = [f"| {e.number} | {e.title}{' (worked example)' if e.worked else ''} | {e.points} |"
            for e in EXERCISES if e.number in numbers or e.worked]
    (root / "README.md").write_text(README.format(table="\n".join(rows)), encoding="utf-8")
    (root / "tests").mkdir()
    (root / "tests/test_exercises.py").write_text(STUDENT_TESTS, encoding="utf-8")
    docs = package_root().parent / "docs"
    if docs.is_dir():
        (root / "docs").mkdir()
        for name in STUDENT_DOCS:
            shutil.copyfile(docs / name, root / "docs" / name)


def student_source(text, path, numbers):
    """``text`` with its fences renamed to EXERCISE and the bodies of the non-worked exercises in ``numbers`` stubbed."""
    lines = text.splitlines(keepends=True)
    for region in reversed(find_regions(text, path)):
        e = exercise(region.number)
        blank = region.number in numbers and not e.worked
        body = stub(e, region.indent) if blank else lines[region.start_line:region.end_line - 1]
        lines[region.start_line - 1:region.end_line] = [
            f'{region.indent}# BEGIN EXERCISE {e.number} "{e.title}"\n', *body, f"{region.indent}# END EXERCISE {e.number}\n"]
    return "".join(lines)


def stub(e, indent):
    """The lines that stand for exercise ``e``'s code: a NotImplementedError that names it and gives the hint."""
    message = f"Exercise {e.number} ({e.title}): implement {e.summary} Hint: {e.hint}"
    pieces = textwrap.wrap(message, width=88 - len(indent), drop_whitespace=False, break_on_hyphens=False)
    literals = [f"{indent}    {json.dumps(piece, ensure_ascii=False)}\n" for piece in pieces]
    return [f"{indent}raise NotImplementedError(\n", *literals, f"{indent})\n"]
