"""The package's shape: its layers import only downwards, no module imports itself back through
others, and the top level stays small enough to read."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nnmnist"
# Lowest first. A module may import its own layer, any layer below it, and the shared modules.
LAYERS = ["kernels", "nn", "optim", "backends", "data", "run", "inference", "experiments"]
SHARED = {"errors", "fsio"}
TOP = {"api", "cli", "__main__"}  # the public faces: they may import anything
MAX_TOP_LEVEL = 14


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules():
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name, path, known):
    """Every package module that `name` imports, at module level or inside functions."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from P import m` of a submodule m imports m (P's __init__ runs by necessity);
            # of any other name, it imports P itself.
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            candidates = subs + ([target] if len(subs) < len(node.names) else [])
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            if c in known and c != name:
                found.add(c)
    return found


def graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer_of(module):
    parts = module.split(".")
    if len(parts) == 1:
        return "nnmnist"
    return parts[1]


def test_top_level_is_small():
    entries = [p for p in PACKAGE.iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py")
               or (p.is_dir() and (p / "__init__.py").exists())]
    assert len(entries) <= MAX_TOP_LEVEL, sorted(p.name for p in entries)
    for p in entries:
        stem = p.stem if p.suffix == ".py" else p.name
        assert stem in set(LAYERS) | SHARED | TOP, f"{p.name} is in no layer"


def test_layers_import_only_downwards():
    order = {layer: i for i, layer in enumerate(LAYERS)}
    bad = []
    for module, targets in graph().items():
        mine = layer_of(module)
        if mine in TOP or module == "nnmnist":
            continue
        for t in targets:
            theirs = layer_of(t)
            if theirs in SHARED or t == "nnmnist":
                continue
            if mine in SHARED:
                bad.append(f"{module} -> {t} (shared modules import no layer)")
            elif theirs in TOP or order[theirs] > order[mine]:
                bad.append(f"{module} -> {t}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    # A package's __init__ importing its own submodules is how packages work; a submodule
    # importing its package's __init__ back is not (that is a cycle), and neither is any other.
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a planted cycle and a planted upward import are reported."""
    pkg = tmp_path / "nnmnist"
    (pkg / "nn").mkdir(parents=True)
    (pkg / "run").mkdir()
    for f in ("__init__.py", "nn/__init__.py", "run/__init__.py", "errors.py"):
        (pkg / f).write_text("")
    (pkg / "nn" / "a.py").write_text("from ..run import b\n")
    (pkg / "run" / "b.py").write_text("def f():\n    from ..nn import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    g = graph()
    assert g["nnmnist.nn.a"] == {"nnmnist.run.b"} and g["nnmnist.run.b"] == {"nnmnist.nn.a"}
    try:
        test_no_import_cycles()
    except AssertionError as exc:
        assert "nnmnist.nn.a -> nnmnist.run.b -> nnmnist.nn.a" in str(exc)
    else:
        raise AssertionError("the cycle was not reported")
    try:
        test_layers_import_only_downwards()
    except AssertionError as exc:
        assert "nnmnist.nn.a -> nnmnist.run.b" in str(exc)
    else:
        raise AssertionError("the upward import was not reported")


def test_pyproject_lists_every_package():
    """The packages are listed by hand in pyproject.toml (the shipped configs need a mapping);
    a package left out would be missing from a wheel."""
    import re
    text = (PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8")
    listed = set(re.findall(r'"(nnmnist(?:\.\w+)*)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    found = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == {"nnmnist.configs"}
