"""The layers of minilora are visible in its imports: no module imports, directly or in a chain, one that imports it.

The check reads the source with ast (nothing is imported): every ``import`` and
``from ... import`` in every module of minilora/, at module level and inside
functions alike, is an edge from that module to each minilora module it names
(``from .x import y`` names minilora.x, or minilora.x.y when y is a
submodule). A package's ``__init__`` is a module of its own; the implicit
import of a parent package is not an edge (it would make every package that
imports its submodules a cycle). Then a depth-first search reports every cycle.
"""
import ast
import pathlib

import minilora

ROOT = pathlib.Path(minilora.__file__).parent

# The one import that points up, on purpose: Tensor's operators (x + y, x @ w) call minilora.functional,
# whose ops are Functions built on autograd's classes. micrograd keeps both in one file; here the ops
# are a layer above the engine, imported on the last line of autograd.py, after the classes they need.
ALLOWED_UPWARD = {("minilora.autograd", "minilora.functional")}


def module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name):
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path):
    """The minilora modules that the file at ``path`` imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:  # from pkg import submodule names the submodule; from module import name, the module
                found.add(f"{source}.{alias.name}" if is_module(f"{source}.{alias.name}") else source)
    return {m for m in found if m.split(".")[0] == "minilora" and is_module(m) and m != name}


def import_graph():
    return {module_name(path): imports_of(path) for path in sorted(ROOT.rglob("*.py"))}


def find_cycles(graph):
    """Every cycle that a depth-first search meets, each as [a, b, ..., a]."""
    cycles, state = [], {}  # state: 1 on the current path, 2 finished

    def visit(node, path):
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif state.get(target) is None:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_minilora_has_no_import_cycle():
    graph = import_graph()
    for source, target in ALLOWED_UPWARD:
        graph[source].discard(target)
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_function_level_and_submodule_imports():
    graph = import_graph()
    assert "minilora.autograd" in graph["minilora.functional.elementwise"]  # from ..autograd import Function
    assert "minilora.functional" in graph["minilora.nn"]  # from . import functional as F
    assert "minilora.generate" in graph["minilora.models.gpt"]  # inside GPT.generate
    assert "minilora.functional.attention" in graph["minilora.functional"]


def test_the_bottom_layer_imports_nothing_above_it():
    graph = import_graph()
    assert graph["minilora.backend"] == set()
    assert graph["minilora.autograd"] - ALLOWED_UPWARD_TARGETS == {"minilora.backend"}


ALLOWED_UPWARD_TARGETS = {target for _, target in ALLOWED_UPWARD}
