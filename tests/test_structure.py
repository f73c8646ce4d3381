"""The package's import structure (DESIGN.md, "Imports run one way, from the foundation up").

Read from the source (``ast``), not by importing: every ``import`` / ``from ... import`` of every module
of ``nxm_kernels/``, at module level and inside functions alike. A function-level (lazy) import is
still a dependency: it only moves the moment it runs, so it counts for cycles and for the direction.

Checked:

* no import cycle between the package's modules (strongly connected components of the graph);
* every import goes down or sideways in :data:`LAYERS`, never up;
* the layers below ``models`` never import ``transformers``; ``triton`` is imported by the Triton
  backend and by :mod:`nxm_kernels.timing` (``triton.testing.do_bench`` on a GPU) only.

The edges a static reading sees: ``from pkg import name`` depends on ``pkg.name`` when that is a module,
else on ``pkg`` (its ``__init__``); ``import a.b.c`` on ``a.b.c``. The package ``__init__`` files that a
dotted import runs on the way are not counted: each imports only what lies below it, which is checked
on its own. Not seen, by design: :func:`nxm_kernels.backends.get_backend` imports a backend module by
name (``importlib``), the one documented lazy import, which goes down (``backends`` -> its own modules),
and ``nxm_kernels._cuda_ext``, the compiled CUDA extension, which is no Python source (:data:`EXTENSIONS`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nxm_kernels"

#: From the foundation up; a module may import from its own layer and the layers before it. Keys are
#: the package's top-level modules and subpackages (``__init__``: the package's own, the public API
#: facade, which imports everything but the CLI).
LAYERS = [
    # torch only: the format, quantization, sparsity, specs and plans, byte accounting, timing
    {"_version", "_checks", "_json", "spec", "quant", "sparsity", "format", "plan", "accounting", "timing"},
    {"backends", "dispatch"},       # kernels and the measured choice between them
    {"ops"},                        # the op and its custom ops
    {"modules", "fusion"},          # NxMLinear, FusedProjection
    {"models"},                     # Hugging Face knowledge: families, swap, zoo, HF integration
    {"io", "calibrate"},            # checkpoints, calibrated one-shot compression
    {"train"},                      # ADMM + QAT
    {"search"},                     # per-component plan search
    {"glue"},                       # GLUE tasks (data, metrics), for the commands
    {"__init__"},                   # the public API
    {"cli", "__main__"},            # the commands
]
#: The modules that may import triton: the Triton backend; timing's GPU timers are Triton's do_bench.
TRITON_USERS = ("nxm_kernels.backends.triton", "nxm_kernels.timing")
#: Compiled modules inside the package (no source to read): leaves of the graph.
EXTENSIONS = {"nxm_kernels._cuda_ext"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is a package __init__)}`` for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _imports(path: Path, name: str, is_pkg: bool, known: set[str]):
    """``(target, lineno, lazy)`` for every import in one module: ``target`` a module of the package
    (or an outside top-level name such as ``transformers``), ``lazy`` when inside a function."""
    base = name if is_pkg else name.rpartition(".")[0]

    def resolve(dotted: str) -> str:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted

    def walk(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    top = alias.name.partition(".")[0]
                    yield (resolve(alias.name) if top == "nxm_kernels" else top), child.lineno, inner
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    pkg = base
                    for _ in range(child.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    target = pkg + ("." + child.module if child.module else "")
                else:
                    target = child.module or ""
                if target.partition(".")[0] != "nxm_kernels":
                    yield target.partition(".")[0], child.lineno, inner
                    continue
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    yield (sub if sub in known else resolve(target)), child.lineno, inner
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(), str(path)), False)


def _graph() -> dict[str, dict[str, list[str]]]:
    """``{module: {imported module of the package: ["line N (lazy)", ...]}}``, outside imports under their
    top-level name."""
    mods = _modules()
    known = set(mods) | EXTENSIONS
    graph: dict[str, dict[str, list[str]]] = {m: {} for m in mods}
    for name, (path, is_pkg) in mods.items():
        for target, line, lazy in _imports(path, name, is_pkg, known):
            where = f"line {line}{' (lazy)' if lazy else ''}"
            if target and target != name and where not in graph[name].setdefault(target, []):
                graph[name][target].append(where)
    return graph


def _cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue  # outside the package, or an extension: a leaf
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _part(module: str) -> str:
    """The top-level module or subpackage a module belongs to (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    part = _part(module)
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{module} belongs to no layer of LAYERS: add {part!r} to the layer it fits")


@pytest.fixture(scope="module")
def graph():
    return _graph()


def test_no_import_cycles(graph):
    cycles = _cycles(graph)
    detail = [f"{a} -> {b} ({', '.join(where)})" for comp in cycles for a in comp
              for b, where in graph[a].items() if b in comp]
    assert not cycles, "import cycles inside nxm_kernels/:\n  " + "\n  ".join(detail)


def test_imports_run_from_the_foundation_up(graph):
    upward = [f"{a} (layer {_layer(a)}) -> {b} (layer {_layer(b)}) at {', '.join(where)}"
              for a, targets in graph.items() for b, where in targets.items()
              if b.startswith("nxm_kernels") and b not in EXTENSIONS and _layer(b) > _layer(a)]
    assert not upward, "imports going up the layers (tests/test_structure.py LAYERS):\n  " + "\n  ".join(upward)


def test_transformers_and_triton_stay_where_they_belong(graph):
    models = next(i for i, layer in enumerate(LAYERS) if "models" in layer)
    wrong = [f"{a} imports transformers ({', '.join(where)})" for a, t in graph.items()
             for b, where in t.items() if b == "transformers" and _layer(a) < models]
    wrong += [f"{a} imports triton ({', '.join(where)})" for a, t in graph.items() for b, where in t.items()
              if b == "triton" and not a.startswith(TRITON_USERS)]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_cycles_and_lazy_imports(tmp_path):
    """The graph reader on a made-up package: a lazy import inside a function closes a cycle."""
    pkg = tmp_path / "nxm_kernels"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from .. import a\n    return a\n")
    mods = {".".join(p.relative_to(tmp_path).with_suffix("").parts[:-1] if p.name == "__init__.py" else
                     p.relative_to(tmp_path).with_suffix("").parts): (p, p.name == "__init__.py")
            for p in pkg.rglob("*.py")}
    edges = {name: {t for t, _, _ in _imports(p, name, is_pkg, set(mods))} for name, (p, is_pkg) in mods.items()}
    assert edges["nxm_kernels.a"] == {"nxm_kernels.sub.b"}
    assert [(t, lazy) for t, _, lazy in _imports(*mods["nxm_kernels.sub.b"][:1], "nxm_kernels.sub.b", False,
                                                  set(mods))] == [("nxm_kernels.a", True)]
    assert _cycles(edges) == [["nxm_kernels.a", "nxm_kernels.sub.b"]]
