"""The tutorials (tutorials/*.ipynb): eight lessons, committed without outputs, each running top to bottom.

Every notebook runs in a fresh kernel and must finish without an error and show at least one
figure; its time is printed (``pytest -s`` shows it; each should take well under 3 minutes on a
2-core CPU). With MINILORA_BACKEND=cupy the kernels inherit it and the notebooks run on the GPU.
"""
import re

import nbformat
import pytest

from notebooks import NOTEBOOKS, execute, figures, stored_outputs

BACKEND_CELL = 'minilora.set_backend(os.environ.get("MINILORA_BACKEND", "numpy"))'


def test_eight_lessons_in_course_order():
    assert [re.match(r"\d\d", p.name).group() for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 9)], NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    stored = stored_outputs(nbformat.read(path, as_version=4))
    assert not stored, (f"{path.name} is committed with outputs {stored}. Fix: "
                        f"jupyter nbconvert --clear-output --inplace tutorials/{path.name}")


def test_the_output_check_sees_outputs():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a"), nbformat.v4.new_code_cell("1 + 1")])
    assert stored_outputs(notebook) == []
    notebook.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    notebook.cells[1].execution_count = 1
    assert stored_outputs(notebook) == [(1, "1 outputs"), (1, "execution count 1")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_cell_picks_the_backend(path):
    cells = [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    assert sum(BACKEND_CELL in source for source in cells) == 1, f"{path.name}: its first code cells must call {BACKEND_CELL}"
    assert BACKEND_CELL in cells[0], f"{path.name}: the backend is picked in the first code cell"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom_with_figures(path):
    notebook, seconds = execute(path)
    print(f"\n{path.name}: {seconds:.1f} s, {figures(notebook)} figures")
    assert figures(notebook) >= 1, f"{path.name} ran but showed no figure"
