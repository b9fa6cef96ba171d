"""The layering of docs/architecture.md, checked on the import graph.

Every project module is parsed (not imported); an edge A -> B is any
`import B` / `from B import ...` in A, at module level or inside a
function. The test fails on:

- a cycle;
- `models/` importing any project module outside `models/`;
- a library module importing an actions module (`train.py`, `main.py`,
  any `*/actions.py`);
- an import that goes up the layer table below;
- a project import inside a function (they belong at module top), or an
  import of a third-party package inside a function without a comment
  (on its line or the two above) saying why: only heavy optional
  dependencies belong there.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP = {"tests", ".venv", "venv", "runs", "cache", "mlruns", ".git"}
# Lowest layer first; a module may import its own layer and the ones below.
LAYERS = (
    ("config",),
    ("runtime",),
    ("data", "models"),
    ("eval", "eda"),
    ("content",),
    ("diffusion",),  # its libraries; diffusion/actions.py is an action
    ("recommenders",),
    ("serving",),
    ("actions",),  # train.py and every */actions.py
    ("main", "benchmarks"),
)


def _project_modules():
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if set(rel.parts) & SKIP:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _project_modules()
TOP_LEVEL = {name.split(".")[0] for name in MODULES}


def _is_actions(module):
    return module in ("train", "main") or module.endswith(".actions")


def _layer(module):
    if module.startswith("benchmarks") or module == "main":
        return len(LAYERS) - 1
    if _is_actions(module):
        return len(LAYERS) - 2
    top = module.split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module} is in no layer of LAYERS")


def _resolve(name):
    """The project module an imported dotted name refers to, or None."""
    if name.split(".")[0] not in TOP_LEVEL:
        return None
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module):
    """`(target, lineno, in_function, is_project)` for every import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef)
            )
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                names = [child.module] + [
                    f"{child.module}.{a.name}" for a in child.names
                ]
            else:
                names = []
            targets = {t for t in map(_resolve, names) if t}
            if names and not targets:
                found.append((names[0], child.lineno, in_function, False))
            for target in targets:
                if target != module:
                    found.append((target, child.lineno, in_function, True))
            visit(child, inner)

    visit(tree, False)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_import_cycles():
    edges = {
        m: sorted({t for t, _, _, project in found if project})
        for m, found in GRAPH.items()
    }
    state, stack = {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            walk(module)


def test_models_import_only_models():
    for module, found in GRAPH.items():
        if not module.startswith("models"):
            continue
        outside = [
            t for t, _, _, p in found if p and not t.startswith("models")
        ]
        assert not outside, f"{module} imports {outside} outside models/"


def test_libraries_never_import_actions():
    for module, found in GRAPH.items():
        if _is_actions(module) or module.startswith("benchmarks"):
            continue
        bad = [t for t, _, _, p in found if p and _is_actions(t)]
        assert not bad, f"library module {module} imports actions {bad}"


def test_imports_never_go_up_a_layer():
    problems = []
    for module, found in GRAPH.items():
        for target, line, _, project in found:
            if project and _layer(target) > _layer(module):
                problems.append(
                    f"{MODULES[module].relative_to(ROOT)}:{line} {module} "
                    f"(layer {_layer(module)}) imports {target} (layer "
                    f"{_layer(target)})"
                )
    assert not problems, "\n".join(problems)


def test_imports_inside_functions_are_justified():
    problems = []
    for module, found in GRAPH.items():
        lines = MODULES[module].read_text(encoding="utf-8").splitlines()
        for target, line, in_function, project in found:
            if not in_function:
                continue
            where = f"{MODULES[module].relative_to(ROOT)}:{line}"
            if project:
                problems.append(
                    f"{where}: project import of {target} inside a function"
                )
                continue
            here = lines[line - 1]
            nearby = [here] + [lines[line - i] for i in (2, 3)]
            if not any("#" in text for text in nearby):
                problems.append(
                    f"{where}: `{here.strip()}` inside a "
                    "function needs a comment saying why"
                )
    assert not problems, "\n".join(problems)
