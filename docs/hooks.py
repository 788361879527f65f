"""mkdocs hooks for the site (mkdocs.yml: ``hooks: [docs/hooks.py]``).

1. The notebooks live in ``tutorials/`` beside ``docs/``, where Jupyter and the tests find them.
   ``on_files`` adds them to the site as ``tutorials/*.ipynb`` before mkdocs-jupyter converts them
   (hence the high priority). ``extra: {tutorials_dir: ...}`` in the config can name another folder
   called ``tutorials`` with copies of the notebooks: the tests build the site from the ones they executed.
2. The guide's pages link to the repository's own files (``../minilora/lora/function.py``,
   ``../tutorials/01_finite_differences.ipynb``), links that work on GitHub but leave the site's
   ``docs/``. ``on_page_markdown`` turns a link to a notebook into the link to its page on the site,
   and a link to any other file into a link to it under ``repo_url`` (when the config sets one) or,
   without one, into the link's text alone.
"""
import os
import re

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

_OUT_OF_DOCS = re.compile(r"\[([^\]]*)\]\((?:\.\./)+([\w./-]+?)(#[^)\s]*)?\)")


@event_priority(100)  # before mkdocs-jupyter's on_files, which must see the notebooks
def on_files(files, config):
    folder = os.path.abspath(os.path.join(os.path.dirname(config.config_file_path),
                                          config["extra"].get("tutorials_dir", "tutorials")))
    if os.path.basename(folder) != "tutorials":
        raise ValueError(f"hooks.py: extra.tutorials_dir must name a folder called 'tutorials', got {folder}")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".ipynb"):
            files.append(File(f"tutorials/{name}", os.path.dirname(folder), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    def replace(match):
        text, path, anchor = match.group(1), match.group(2), match.group(3) or ""
        if path.startswith("tutorials/") and path.endswith(".ipynb"):
            return f"[{text}]({path}{anchor})"
        if config.get("repo_url"):
            return f"[{text}]({config['repo_url'].rstrip('/')}/blob/main/{path}{anchor})"
        return text

    return _OUT_OF_DOCS.sub(replace, markdown)
