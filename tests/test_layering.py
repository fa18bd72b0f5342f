"""The import contract of the whole tree, read from the source with ``ast``.

Layers, from the bottom up (see ``docs/architecture.md``):

* the base of ``securefed``: errors, the hospital arrays, the wire format, codecs, the
  channel contract, registries;
* ``securefed.data`` and ``securefed.models`` (data never loads the engine or torch);
* the engine (``securefed.federated``) with ``securefed.compression``;
* the protections (``securefed.secagg``, ``securefed.he``, ``securefed.dp``), which never
  import one another, and ``securefed.observation``;
* deployment (``securefed.flower``) and the core command line (``securefed.cli``);
* ``attacks`` and ``defenses`` (never each other), then ``evaluation`` on top.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("securefed", "attacks", "defenses", "evaluation")

BASE = {
    "securefed._compat",
    "securefed.errors",
    "securefed.arrays",
    "securefed.wire",
    "securefed.codec",
    "securefed.channel",
    "securefed.registry",
    "securefed.identity",
}
CORE_BELOW_DEPLOYMENT = BASE | {
    "securefed.data", "securefed.models", "securefed.compression", "securefed.federated",
    "securefed.secagg", "securefed.he", "securefed.dp", "securefed.observation",
}
ALL_CORE = CORE_BELOW_DEPLOYMENT | {"securefed.flower", "securefed.cli", "securefed"}

# component -> the components it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "securefed._compat": set(),
    "securefed.errors": set(),
    "securefed.arrays": {"securefed.errors"},
    "securefed.wire": {"securefed.errors"},
    "securefed.codec": {"securefed.errors"},
    "securefed.channel": {"securefed.errors", "securefed.wire", "securefed.codec"},
    "securefed.registry": {"securefed.errors"},
    "securefed.identity": {"securefed.errors"},
    "securefed.models": {"securefed.errors"},
    "securefed.data": BASE,
    "securefed.compression": BASE,
    "securefed.federated": BASE | {"securefed.models", "securefed.compression"},
    "securefed.secagg": BASE,
    "securefed.he": BASE,
    "securefed.dp": BASE | {"securefed.models", "securefed.federated"},
    "securefed.observation": BASE | {"securefed.models", "securefed.federated"},
    "securefed.flower": CORE_BELOW_DEPLOYMENT,
    "securefed.cli": CORE_BELOW_DEPLOYMENT | {"securefed.flower"},
    "securefed.__main__": {"securefed.cli"},
    "securefed": CORE_BELOW_DEPLOYMENT,  # the package's own __init__ (lazy re-exports)
    "attacks": CORE_BELOW_DEPLOYMENT,
    "defenses": CORE_BELOW_DEPLOYMENT,
    "evaluation": ALL_CORE | {"attacks", "defenses"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, *, runtime_only: bool) -> set[str]:
    """Project modules that ``module`` imports (a ``from pkg import sub`` names ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{stem}.{alias.name}"
                targets.append(sub if sub in SOURCES else stem)
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] in PACKAGES)
    return out


def _component(module: str) -> str:
    if module.split(".")[0] != "securefed":
        return module.split(".")[0]
    parts = module.split(".")
    return "securefed" if len(parts) == 1 else ".".join(parts[:2])


def test_every_component_is_in_the_contract() -> None:
    missing = sorted({_component(m) for m in SOURCES} - set(ALLOWED))
    assert missing == [], f"components without a layering rule: {missing}"


def test_imports_run_one_way() -> None:
    violations = []
    for module, path in SOURCES.items():
        comp = _component(module)
        for target in sorted(_imports(module, path, runtime_only=False)):
            target_comp = _component(target)
            if target_comp != comp and target_comp not in ALLOWED[comp]:
                violations.append(f"{module} imports {target} ({comp} may not import {target_comp})")
    assert violations == [], "\n".join(violations)


def test_lazy_exports_run_one_way() -> None:
    """The lazy packages name their sources as strings; those must obey the contract too."""
    import securefed
    import securefed.federated

    for pkg in (securefed, securefed.federated):
        comp = _component(pkg.__name__)
        for name, target in pkg._EXPORTS.items():
            assert target in SOURCES, f"{pkg.__name__}.{name} points at missing {target}"
            assert _component(target) in ALLOWED[comp] | {comp}, (pkg.__name__, name, target)


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in SOURCES.items():
        graph[module] = {t for t in _imports(module, path, runtime_only=True)
                         if t in SOURCES and t != module}
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The contract check itself can fail: a hidden upward import is reported."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from evaluation import runner\n    import attacks.base\n")
    assert _imports("securefed.data.mod", src, runtime_only=False) == {"evaluation.runner",
                                                                        "attacks.base"}
    rel = tmp_path / "__init__.py"
    rel.write_text("from .schema import Schema\nfrom . import csvio\n")
    assert _imports("securefed.data", rel, runtime_only=False) == {"securefed.data.schema",
                                                                   "securefed.data.csvio"}


@pytest.mark.parametrize("module, heavy", [
    ("securefed", ("torch", "tenseal", "dp_accounting", "cryptography", "flwr")),
    ("securefed.data", ("torch", "tenseal", "securefed.federated.engine")),
    ("securefed.secagg", ("torch", "securefed.federated.engine")),
    ("securefed.he", ("torch", "securefed.federated.engine")),
])
def test_importing_a_layer_does_not_load_what_is_above_it(module: str, heavy: tuple[str, ...]) -> None:
    code = (f"import sys, {module}\n"
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"
