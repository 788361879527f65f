"""The tutorials' notebooks, executed once per test session: test_tutorials.py and test_site.py share the runs.

Each notebook runs in a fresh kernel (nbclient) in ``tutorials/``, with the inline matplotlib
backend and ``MINILORA_TUTORIAL_LAB`` set to this session's own folder, so that lessons 7 and 8
share their training runs with each other but never with an earlier session. The kernel's BLAS
runs one thread (unless OPENBLAS_NUM_THREADS is set already): the notebooks' matrices are 64
wide, too small for threads to pay, and on a busy 2-core machine OpenBLAS's waiting threads made
lesson 5 take 294 s instead of about 30. The executed copies
are written to ``folder() / "tutorials"``, where the site's build (docs/hooks.py) reads them.
"""
import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
FIGURE_TYPES = ("image/png", "image/svg+xml")
_runs = {}  # notebook name -> (executed notebook, seconds)
_folder = []


def folder():
    """This session's folder: ``tutorials/`` (the executed notebooks) and ``lab/`` (lessons 7 and 8's cache)."""
    if not _folder:
        path = Path(tempfile.mkdtemp(prefix="minilora-notebooks-"))
        (path / "tutorials").mkdir()
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _folder.append(path)
    return _folder[0]


def stored_outputs(notebook):
    """[(cell index, what)] of every code cell that holds outputs or an execution count."""
    found = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            if cell.get("outputs"):
                found.append((i, f"{len(cell.outputs)} outputs"))
            if cell.get("execution_count") is not None:
                found.append((i, f"execution count {cell.execution_count}"))
    return found


def figures(notebook):
    """How many images (PNG or SVG) the notebook's outputs hold."""
    return sum(1 for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []) if any(kind in output.get("data", {}) for kind in FIGURE_TYPES))


def execute(path):
    """(the executed notebook, seconds it took); runs ``path`` in a fresh kernel the first time only.

    Raises nbclient's CellExecutionError, with the failing cell and its traceback, on any error.
    """
    import nbclient
    import nbformat

    if path.name not in _runs:
        notebook = nbformat.read(path, as_version=4)
        env = {"MINILORA_TUTORIAL_LAB": str(folder() / "lab"), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
               "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)  # the kernel is a subprocess: it starts with this environment
        try:
            client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                             resources={"metadata": {"path": str(TUTORIALS)}})
            started = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - started
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        nbformat.write(notebook, folder() / "tutorials" / path.name)
        _runs[path.name] = (notebook, seconds)
    return _runs[path.name]
