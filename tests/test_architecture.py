"""The layers of docs/architecture.md, enforced: imports point one way, no cycles, no private names
taken from another module, small modules. Imports inside functions count as much as those at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400

# lowest first; a module may import its own layer and the layers below it, never a sibling
LAYERS = [
    {"cull.errors", "cull.resources", "cull.version"},
    {"cull.text"},
    {"cull.rules"},
    {"cull.compile"},
    {"cull.kernels"},
    {"cull.decode"},
    {"cull.integrations", "cull.measure"},
    {"cull.finetune"},
    {"cull.cli"},
    {"cull", "cull.__main__"},  # the front door: the public names, imported lazily
]
KERNELS_MAY_IMPORT = {"cull.errors", "cull.compile.tables"}  # the tables' type and the errors, nothing else


def source_modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((ROOT / "cull").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        parts = ("cull",) + path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = source_modules()


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, at any depth."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            out.append((target, [n for n in names if f"{target}.{n}" not in MODULES], node.lineno))
            out += [(s, [], node.lineno) for s in submodules]
    return [(t, names, line) for t, names, line in out if t == "cull" or t.startswith("cull.")]


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add its folder to LAYERS and docs/architecture.md"
    return rank


def package_of(module: str) -> str:
    for layer in LAYERS:
        for prefix in layer:
            if prefix != "cull" and (module == prefix or module.startswith(prefix + ".")):
                return prefix
    return module


EDGES = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer_of(name)


def test_imports_point_down_the_layers():
    bad = []
    for name, edges in EDGES.items():
        mine = layer_of(name)
        for target, _, line in edges:
            theirs = layer_of(target)
            sibling = theirs == mine and package_of(target) != package_of(name)
            if theirs > mine or sibling:
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "imports against the layer order (docs/architecture.md):\n" + "\n".join(bad)


def test_kernels_depend_only_on_the_tables_type_and_errors():
    bad = [f"{MODULES[n].relative_to(ROOT)}:{line} imports {t}" for n, edges in EDGES.items()
           if n.startswith("cull.kernels") for t, _, line in edges
           if not t.startswith("cull.kernels") and t not in KERNELS_MAY_IMPORT]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {n: {t for t, _, _ in edges if t in MODULES and t != n} for n, edges in EDGES.items()}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_from_other_modules():
    bad = [f"{MODULES[n].relative_to(ROOT)}:{line} takes {name} from {t}"
           for n, edges in EDGES.items() for t, names, line in edges for name in names
           if name.startswith("_") and not name.startswith("__") and t != n]
    assert not bad, "\n".join(bad)


def test_no_private_attributes_of_other_modules():
    """`module._name` on an imported cull module is the same leak as importing `_name`."""
    bad = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("cull"):
                        aliases[a.asname or a.name.split(".")[0]] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cull"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_small(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (> {MAX_LINES}): split it"


def test_the_checker_sees_violations(tmp_path):
    """The walker finds imports inside functions and resolves relative ones (else it checks nothing)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from ..cli.main import _private\n    import cull.decode.processor\n")
    got = imports_of("cull.compile.m", f)
    assert ("cull.cli.main", ["_private"], 2) in got
    assert ("cull.decode.processor", [], 3) in got
    assert layer_of("cull.cli.main") > layer_of("cull.compile.m")


def test_tests_mirror_the_folders():
    """tests/<layer>/ holds the tests of cull/<layer>/ (tests/vllm: the engine tests, in their own venv)."""
    layers = {p.name for p in (ROOT / "cull").iterdir() if (p / "__init__.py").is_file()} | {"kernels"}
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders - {"vllm"} <= layers, f"test folders without a layer: {sorted(folders - layers - {'vllm'})}"
    assert len(folders) >= 8
