"""The docs run as written, render as meant, and state what the code and the arithmetic say.

1. Code. Every ```python block of README.md and docs/*.md runs. The blocks of one file run in
   order in one namespace, as a reader would type them into one Python session, in a fresh
   temporary working directory. That directory holds ``runs/pretrain/``, the folder that
   ``minilora pretrain`` writes by default (here a tiny model, three steps: trained once per test
   session, copied for each file). A block that cannot run here is marked on the line just before its fence, with the
   reason, which becomes the skip's message (a block marked "needs a GPU" does run where the cupy
   backend can):

       <!-- skip: needs a GPU -->
       ```python

   Nothing else is skipped.
2. Rendering (markdown-it-py, CommonMark as GitHub reads it). An ordered list shows the numbers
   its source writes (``4. 3. 2. 1.`` would render as 4, 5, 6, 7); no bullet starts with a
   number or a math symbol (a formula's continuation line that begins with ``- 2 Σ`` becomes a
   nested bullet and loses its minus sign); bullets use ``-`` only, so a line that starts with
   ``+`` or ``*`` is never a bullet by accident.
3. Notation. Where dz means dL/dz, a partial derivative is written ∂y/∂x, never dy/dx.
4. References. Every repository path a doc names (``minilora/nn.py``, ``tests/test_x.py``, a
   relative link) exists.
5. Numbers. The FLOP count of docs/lora.md is recomputed here, and the amplification factor's
   formula as docs/lora.md writes it is compared with ``minilora.analysis``.
"""
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from minilora import backend

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*skip:\s*(.+?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")
GPU = "needs a GPU"  # a block so marked runs where the cupy backend can (MINILORA_BACKEND=cupy, docs/gpu.md)


def python_blocks(path):
    """[(line number of the fence, code, skip reason or None)] for every ```python block of ``path``."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), len(lines))
        if opening.group(1) == "python":
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            skip = SKIP.fullmatch(before.strip())
            blocks.append((i + 1, "\n".join(lines[i + 1:end]) + "\n", skip.group(1) if skip else None))
        i = end + 1
    return blocks


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """runs/pretrain/ as ``minilora pretrain`` writes it: a tiny model, three steps."""
    out = tmp_path_factory.mktemp("pretrain") / "runs" / "pretrain"
    command = [sys.executable, "-m", "minilora.cli", "pretrain", "--out", str(out), "--steps", "3",
               "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--sentences", "200",
               "--eval-every", "3", "--checkpoint-every", "3", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def restore_backend():
    """A block may switch the backend or the default dtype (gpu.md does): put both back afterwards."""
    name, dtype = backend.get_backend(), backend.get_default_dtype()
    yield
    backend.set_backend(name)
    backend.set_default_dtype(dtype)


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(path, pretrained, tmp_path, monkeypatch, restore_backend):
    shutil.copytree(pretrained, tmp_path / "runs" / "pretrain")  # a copy: no block can change another file's
    monkeypatch.chdir(tmp_path)
    namespace, skipped = {"__name__": "__docs__"}, []
    for line, code, skip in python_blocks(path):
        if skip and not (skip.startswith(GPU) and backend.cupy_unavailable_reason() is None):
            skipped.append(f"line {line}: {skip}")
            continue
        try:
            exec(compile("\n" * line + code, str(path.relative_to(ROOT)), "exec"), namespace)  # tracebacks give the doc's lines
        except Exception:
            pytest.fail(f"{path.relative_to(ROOT)}: the block at line {line} fails:\n{traceback.format_exc()}")
    if skipped:
        pytest.skip("; ".join(skipped))


def test_block_extraction_and_skip_marks(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n```python\na = 1\n```\n\n<!-- skip: needs a GPU -->\n\n```python\nb = 2\n```\n"
                   "```bash\nls\n```\n```\nplain\n```\n", encoding="utf-8")
    assert python_blocks(doc) == [(3, "a = 1\n", None), (9, "b = 2\n", "needs a GPU")]


# ---- 2. rendering -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def markdown():
    try:
        from markdown_it import MarkdownIt
    except ImportError as error:
        pytest.fail(f"test_docs needs markdown-it-py ({error}). Fix: pip install markdown-it-py (part of the test extra)")
    return MarkdownIt("commonmark").enable("table")


def list_items(tokens):
    """[(kind, marker as written, the number it renders as or None, text of its first line, source line)]."""
    items, lists = [], []
    for i, token in enumerate(tokens):
        if token.type in ("ordered_list_open", "bullet_list_open"):
            lists.append([token, int(token.attrGet("start") or 1) if token.type == "ordered_list_open" else None])
        elif token.type in ("ordered_list_close", "bullet_list_close"):
            lists.pop()
        elif token.type == "list_item_open":
            opened, number = lists[-1]
            text = next((t.content for t in tokens[i + 1:] if t.type == "inline"), "")
            kind = "ordered" if number is not None else "bullet"
            marker = token.info if kind == "ordered" else token.markup
            items.append((kind, marker, number, text, token.map[0] + 1))
            if number is not None:
                lists[-1][1] += 1
    return items


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_lists_render_as_written(path, markdown):
    problems = []
    for kind, marker, number, text, line in list_items(markdown.parse(path.read_text(encoding="utf-8"))):
        if kind == "ordered" and int(marker) != number:
            problems.append(f"line {line}: the item written '{marker}.' renders as {number}")
        elif kind == "bullet" and marker != "-":
            problems.append(f"line {line}: a bullet made with {marker!r}")
        elif kind == "bullet" and re.match(r"[0-9Σ∂√±×·/=+−(<>]", text):
            problems.append(f"line {line}: a bullet that starts like a formula: {text[:40]!r}")
    assert not problems, (
        f"{path.relative_to(ROOT)} does not render as written: {problems}. CommonMark numbers a list from its first "
        "item, so write the numbers it renders (or steps as paragraphs, '**Step 4.**'); a continuation line that "
        "begins with '- ' becomes a bullet and loses its minus sign, so break the line elsewhere; bullets use '-'.")


def test_list_checks_catch_the_known_mistakes(markdown):
    steps = list_items(markdown.parse("Backward:\n\n4. four\n3. three\n"))
    assert [(marker, number) for _, marker, number, _, _ in steps] == [("4", 4), ("3", 5)]
    nested = list_items(markdown.parse("- **var** y = a\n  - 2 Σ_j b\n"))
    assert nested[1][0] == "bullet" and nested[1][3].startswith("2 Σ")


# ---- 3. notation ------------------------------------------------------------------------------
DZ_MEANS_DL_DZ = ["docs/derivations.md", "docs/lora.md"]  # the docs that write dz for dL/dz
OVERLOADED_D = re.compile(r"(?<![\w∂])d(?!L/)[\w⁻¹()ᵀμσ̂]+/d[\w(]")


@pytest.mark.parametrize("name", DZ_MEANS_DL_DZ)
def test_no_overloaded_d(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    text = re.sub(r"`[^`\n]*`|\]\([^)]*\)", " ", text)  # code spans and link targets are not math
    assert "dz means dL/dz" in text, f"{name} no longer states the convention this test relies on"
    bad = [(text.count("\n", 0, m.start()) + 1, m.group()) for m in OVERLOADED_D.finditer(text)]
    assert not bad, f"{name}: d is dL/d..., so write a partial derivative as ∂y/∂x: {bad}"
    assert OVERLOADED_D.search("dx_i = Σ_j dy_j · dy_j/dx_i") and not OVERLOADED_D.search("dL/dH, ∂y_j/∂x_i")


# ---- 4. references ----------------------------------------------------------------------------
# The tree's files, not git's list: a copy without .git (a GPU machine's) must pass too, and an untracked
# file that a doc cites still fails in CI's fresh clone, where it does not exist.
TRACKED = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
           if p.is_file() and not any(part.startswith(".") or part in ("__pycache__", "runs", "build")
                                      for part in p.relative_to(ROOT).parts)]
PATH_IN_BACKTICKS = re.compile(r"`([\w.-]+(?:/[\w.-]+)+\.(?:py|md|toml|json|yml|yaml|txt))`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_files_exist(path):
    text = path.read_text(encoding="utf-8")
    missing = [name for name in PATH_IN_BACKTICKS.findall(text)
               if not any(tracked == name or tracked.endswith("/" + name) for tracked in TRACKED)]
    missing += [link for link in LINK.findall(text)
                if "://" not in link and not (path.parent / link).exists()]
    assert TRACKED and not missing, f"{path.relative_to(ROOT)} cites files that are not in the repository: {missing}"


# ---- 5. numbers -------------------------------------------------------------------------------
def test_lora_md_flop_count_is_the_arithmetic():
    """docs/lora.md, section 3: one layer's saving, and the FLOPs of a GPT-3 training step per token and layer."""
    from minilora.analysis import linear_layer_costs

    text = (ROOT / "docs" / "lora.md").read_text(encoding="utf-8")
    layer = linear_layer_costs(768, 768, 8, tokens=1)
    assert f"{layer['flops_saved']:,} FLOPs per token" in text
    assert f"{round(100 * layer['flops_saved'] / layer['full_flops'])} % of the layer's training FLOPs" in text

    d, T, r = 12288, 2048, 4                   # GPT-3 175B, its context, the paper's rank on Wq and Wv
    weights = 2 * (4 * d * d + 2 * 4 * d * d)  # q, k, v, o and the MLP's two d x 4d products, forward
    attention = 2 * 2 * T * d                  # q k^T and P v over T keys, forward
    low_rank = 2 * 6 * r * (d + d)             # forward, dX, dA, dB of the two adapters
    full = 3 * weights + 3 * attention         # forward, dX, dW; each attention product's backward is two
    lora = 2 * weights + 3 * attention + low_rank
    only_q_v = full - 2 * 2 * d * d + low_rank
    for value in (weights, attention, low_rank, full, lora, only_q_v):
        assert f"{value:,}" in text, value
    assert f"{100 * (1 - lora / full):.1f} % fewer" in text and f"{100 * (1 - only_q_v / full):.1f} % fewer" in text
    assert f"{100 * (1 - 32.5 / 43.1):.1f} % less" in text  # the paper's tokens/s, full against LoRA


def test_lora_md_amplification_formula_is_the_code():
    """‖Uᵀ W Vᵀ‖_F with U (d, r) as columns and V (r, k) as rows, on a ΔW whose SVD is built by hand."""
    from minilora.analysis import amplification

    rng = np.random.default_rng(0)
    d, k, r = 7, 5, 2
    U = np.linalg.qr(rng.standard_normal((d, r)))[0]     # (d, r) orthonormal columns
    V = np.linalg.qr(rng.standard_normal((k, r)))[0].T   # (r, k) orthonormal rows
    delta_w = U @ np.diag([3.0, 0.5]) @ V                # ΔW = U Σ V, rank r
    W = rng.standard_normal((d, k))
    result = amplification(delta_w, W, r)
    assert result["projection_norm"] == pytest.approx(np.linalg.norm(U.T @ W @ V.T), rel=1e-12)
    assert result["factor"] == pytest.approx(np.linalg.norm(delta_w) / np.linalg.norm(U.T @ W @ V.T), rel=1e-12)
