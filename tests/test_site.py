"""The documentation site (mkdocs.yml): ``mkdocs build --strict`` passes, and the key pages are there.

The tutorials render with their outputs. A real build executes them (mkdocs-jupyter,
``execute: true``); here the site is built from the copies that tests/notebooks.py executed for
test_tutorials.py, so that CI runs each notebook once, not twice. The build's own time is printed.
"""
import re
import subprocess
import sys
import time

import pytest
import yaml

from notebooks import NOTEBOOKS, ROOT, execute, figures, folder



@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The folder of the site, built with --strict from the executed notebooks."""
    executed = {path.name: figures(execute(path)[0]) for path in NOTEBOOKS}
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config["docs_dir"] = str(ROOT / "docs")
    config["hooks"] = [str(ROOT / hook) for hook in config["hooks"]]
    config.setdefault("extra", {})["tutorials_dir"] = str(folder() / "tutorials")
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocs-jupyter" in plugin:
            plugin["mkdocs-jupyter"].update(execute=False, cache=False)  # already executed, and nothing written into the tree
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    work = tmp_path_factory.mktemp("site")
    (work / "mkdocs.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    started = time.perf_counter()
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(work / "mkdocs.yml"),
                            "-d", str(work / "site")], capture_output=True, text=True, cwd=work)
    print(f"\nmkdocs build --strict: {time.perf_counter() - started:.1f} s")
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-6000:]}"
    return work / "site", executed


def page(site_dir, name):
    path = site_dir / name / "index.html" if name else site_dir / "index.html"
    assert path.exists(), f"the site has no page {name or 'index'}: {sorted(p.name for p in site_dir.iterdir())}"
    return path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_home_and_guide(site):
    site_dir, _ = site
    assert "Where to start" in page(site_dir, "")
    for name, words in (("autograd", "walks the graph once"), ("lora", "The gradient of"), ("derivations", "softmax")):
        assert words in page(site_dir, name), name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_pages_embed_their_figures(site, path):
    site_dir, executed = site
    html = page(site_dir, f"tutorials/{path.stem}")
    embedded = html.count("data:image/png;base64") + html.count("<svg")
    assert embedded >= executed[path.name] >= 1, f"{path.stem}: {embedded} images embedded, the notebook made {executed[path.name]}"


@pytest.mark.slow
def test_the_tutorials_page_links_each_lesson(site):
    html = page(site[0], "tutorials")
    for path in NOTEBOOKS:
        assert f'href="{path.stem}/"' in html, f"tutorials page does not link to {path.stem}"


@pytest.mark.slow
def test_api_reference_from_docstrings(site):
    html = page(site[0], "reference")
    for name in ("minilora.lora.lora_linear", "minilora.functional.softmax.softmax", "minilora.functional.cross_entropy", "minilora.nn.Linear", "minilora.optim.AdamW",
                 "minilora.train.fit", "minilora.analysis.subspace_similarity", "minilora.gradcheck.gradcheck", "minilora.Tensor"):
        assert f'id="{name}"' in html, f"the API reference does not document {name}"
    assert "h = x W0^T + b + scaling * (x A^T) B^T" in html  # lora_linear's docstring itself


@pytest.mark.slow
def test_every_link_inside_the_site_resolves(site):
    """No page links to a file the site lacks. The guide's links to source files (../minilora/...) work on
    GitHub; docs/hooks.py rewrites them, and the links to notebooks, for the site."""
    site_dir = site[0]
    broken = []
    for html in site_dir.rglob("*.html"):
        for href in re.findall(r'href="([^"#?]+)', html.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", href) or href.startswith("/"):
                continue  # http(s), mailto, data: not files of the site
            target = (html.parent / href).resolve()
            if not (target.is_file() or (target / "index.html").is_file()):
                broken.append((html.relative_to(site_dir).as_posix(), href))
    assert not broken, broken[:20]


def test_the_guide_links_to_source_files_on_github_only():
    """The hook's rewriting of a line like those of docs/derivations.md, with and without repo_url."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    line = "See [`softmax.py`](../minilora/functional/softmax.py#L5) and [lesson 1](../tutorials/01_finite_differences.ipynb)."
    assert hooks.on_page_markdown(line, None, {}, None) == \
        "See `softmax.py` and [lesson 1](tutorials/01_finite_differences.ipynb)."
    assert hooks.on_page_markdown(line, None, {"repo_url": "https://github.com/o/minilora/"}, None) == \
        "See [`softmax.py`](https://github.com/o/minilora/blob/main/minilora/functional/softmax.py#L5) and " \
        "[lesson 1](tutorials/01_finite_differences.ipynb)."
