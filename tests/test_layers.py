"""The import-layer contract: every arrow points down, and no module takes part in an import circle.

Imports inside functions count as much as those at the top (they hide a circle, they do not remove it); only
`if TYPE_CHECKING:` blocks are left out. Read from the source files, so nothing is imported to check.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Import name -> folder (pyproject's package-dir).
SOURCES = {"framefusion": ROOT / "framefusion", "framefusion_cli": ROOT / "cli"}
# Top to bottom. A module may import its own package and any package of a lower layer; packages that share a layer
# do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("framefusion_cli",),
    ("framefusion.apps",),
    ("framefusion.pipeline",),
    ("framefusion.model_zoo", "framefusion.profiles", "framefusion.api"),
    ("framefusion.families",),
    ("framefusion.runtime", "framefusion.video"),
    ("framefusion.methods",),
    ("framefusion.errors",),
]
MOST_MODULES_AT_THE_TOP = 8


def module_files() -> dict[str, Path]:
    modules = {}
    for name, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    return skipped


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports (the longest known prefix of each imported name)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            names = [name for name in submodules if name in known] or [base]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in known:
                    if candidate != module:
                        found.add(candidate)
                    break
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: imports_of(module, path, set(files)) for module, path in files.items()}


def layer_of(module: str) -> tuple[float, str] | None:
    if module == "framefusion":  # the package's __init__: the library's API re-exported, just above the API's layer
        return next(index for index, packages in enumerate(LAYERS) if "framefusion.api" in packages) - 0.5, module
    for index, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return index, package
    return None


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_takes_part_in_an_import_circle():
    assert circles(import_graph()) == []


def test_every_import_points_down_the_layers():
    upward = []
    for module, imported in import_graph().items():
        here = layer_of(module)
        assert here is not None, f"{module} is in no layer: add its package to LAYERS"
        for target in sorted(imported):
            there = layer_of(target)
            assert there is not None, f"{target} is in no layer: add its package to LAYERS"
            if there[1] != here[1] and there[0] <= here[0]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_the_library_top_level_holds_few_modules_and_the_rest_sits_in_layer_packages():
    top = sorted(path.name for path in (ROOT / "framefusion").glob("*.py"))
    assert len(top) <= MOST_MODULES_AT_THE_TOP, top
    for folder in (ROOT / "framefusion").iterdir():
        if folder.is_dir() and (folder / "__init__.py").is_file():
            assert layer_of(f"framefusion.{folder.name}") is not None, folder.name


def test_the_contract_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    # The checks above must be able to fail: a tiny tree with both faults.
    package = tmp_path / "framefusion"
    (package / "methods").mkdir(parents=True)
    (package / "pipeline").mkdir()
    (package / "__init__.py").write_text("")
    (package / "methods" / "__init__.py").write_text("")
    (package / "pipeline" / "__init__.py").write_text("")
    (package / "methods" / "a.py").write_text("def f():\n    from framefusion.pipeline import b\n")
    (package / "pipeline" / "b.py").write_text("from framefusion.methods import a\n")
    monkeypatch.setitem(SOURCES, "framefusion", package)
    monkeypatch.delitem(SOURCES, "framefusion_cli")
    graph = import_graph()
    assert circles(graph) == [["framefusion.methods.a", "framefusion.pipeline.b"]]
    assert layer_of("framefusion.methods.a")[0] > layer_of("framefusion.pipeline.b")[0]


def test_the_settings_of_a_run_are_made_in_one_place():
    # Every command and the lmms-eval model get the same checks because one function makes RunSettings.
    makers = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "RunSettings":
                makers.append(module)
    assert makers == ["framefusion.pipeline.preflight"]


def test_no_module_is_longer_than_a_reader_can_hold():
    longer = {module: length for module, path in module_files().items()
              if (length := len(path.read_text().splitlines())) > 400}
    assert longer == {}
