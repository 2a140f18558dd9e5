"""The package's shape: every module imports on its own, the import graph has no circle, imports
sit at the top of each module (optional dependencies excepted), and no module reaches for another
module's private names."""
import ast
import subprocess
import sys
from pathlib import Path

import faithful

PACKAGE = Path(faithful.__file__).parent
OPTIONAL = {"vllm", "nbformat", "nbclient"}
"""Dependencies that may be missing (vllm; the notebooks extra, for `python -m faithful notebooks`);
only they are imported inside functions."""


def modules() -> dict[str, Path]:
    """``faithful.x.y`` → file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> list[tuple[bool, str, list[str]]]:
    """(at the module's top level, absolute module, imported names) of every import in a module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(id(node) in top, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((id(node) in top, base, [a.name for a in node.names]))
    return out


def graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (``from .pkg import mod`` counts as ``pkg.mod``)."""
    mods = modules()
    edges = {}
    for name, path in mods.items():
        deps = set()
        for _, base, names in imports(name, path):
            if base in mods:
                deps.add(base)
            deps |= {f"{base}.{n}" for n in names if f"{base}.{n}" in mods}
        edges[name] = deps - {name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circle():
    # package __init__ files import their children to re-export them: that is not a circle
    edges = {m: {d for d in deps if not m.startswith(d + ".") and not (m == "faithful")}
             for m, deps in graph().items()}
    assert find_cycle(edges) is None, f"import circle: {' → '.join(find_cycle(edges))}"


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_pipeline_only_looks_down():
    """data → sae → metrics → report: no stage imports a later one."""
    layer = {"data": 1, "sae": 2, "metrics": 3, "report": 4}
    for name, deps in graph().items():
        own = layer.get(name.split(".")[1]) if name.count(".") >= 2 else None
        for dep in deps:
            theirs = layer.get(dep.split(".")[1]) if dep.count(".") >= 2 else None
            if own is not None and theirs is not None:
                assert theirs <= own, f"{name} imports {dep}, a later stage of the pipeline"


def test_imports_sit_at_the_top_and_names_stay_private():
    for name, path in modules().items():
        for at_top, base, names in imports(name, path):
            if not at_top:
                assert base.split(".")[0] in OPTIONAL, f"{name}: a function-local import of {base}"
            if base.startswith("faithful") and base != name:
                private = [n for n in names if n.startswith("_") and f"{base}.{n}" not in modules()]
                assert not private, f"{name} imports private {private} from {base}"


def test_every_module_imports_in_a_fresh_interpreter():
    """Every module, in one fresh interpreter (importing any submodule runs ``faithful/__init__``
    first, so an interpreter per module would test the same thing again)."""
    names = [m for m in sorted(modules(), key=lambda m: (m.count("."), m)) if m != "faithful.__main__"]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in names)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_only_notebooks_and_the_cli_read_the_profile_setting():
    """Library functions take budgets as arguments: only ``config`` and ``__main__`` call
    ``get_profile`` (which reads ``FAITHFUL_PROFILE``)."""
    readers = [name for name, path in modules().items() if name not in ("faithful", "faithful.config",
               "faithful.__main__") and "get_profile(" in path.read_text().replace("faithful.get_profile()", "")]
    assert readers == []
