"""The project's import graph, read from the source (ast, every import, lazy ones inside functions too):
no cycles, and the layers import only downwards: common <- data <- train <- launch."""

import ast
from pathlib import Path

from common.paths import REPO

PACKAGES = ("common", "data", "train", "launch")
# what each layer may import from the project
ALLOWED = {"common": ("common",), "data": ("common", "data"), "train": ("common", "data", "train"),
           "launch": PACKAGES}


def project_modules() -> dict:
    """Dotted module name -> path, for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, modules: dict) -> set:
    """The project modules `path` imports: `from a.b import c` names module a.b.c when it is one, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.add(target if target in modules else node.module)
    return {name for name in found if name in modules}


def graph() -> dict:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def cycles(edges: dict) -> list:
    """The strongly connected components with more than one module (Tarjan's algorithm), or a self-import."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_layers_import_only_downwards():
    wrong = [(module, target) for module, targets in graph().items() for target in targets
             if target.split(".")[0] not in ALLOWED[module.split(".")[0]]]
    assert wrong == []


def test_the_graph_holds_known_edges_and_lazy_imports(tmp_path):
    edges = graph()
    assert "train.parallel.dims" in edges["train.trainer"] and "data.chat.template" in edges["data.tokenizer"]
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from train.model import hf\n    import data.reader\n")
    assert imports_of(source, project_modules()) == {"train.model.hf", "data.reader"}
