"""``python -m lessor.tools.imports``: check lessor's import graph.

Every module of the package is parsed with ``ast`` (nothing is imported or run).
Each import of a lessor module becomes an edge of the module graph, of one of
three kinds:

- ``module``: a module-level import (it runs when the module is imported),
- ``function``: an import inside a function (it runs when the function is called),
- ``type``: an import under ``if TYPE_CHECKING:`` (it never runs).

*Runtime* edges are the first two. The check prints:

1. imports of ``lessor.cli`` from outside the CLI: the CLI is the top, nothing
   below may import it (``lessor/__main__.py``, which is ``python -m lessor``,
   sits in the CLI layer);
2. upward imports: a module importing a module of a higher layer (table below);
3. import cycles: the strongly connected components of the runtime graph, and
   separately the ones that only close through ``TYPE_CHECKING`` imports;
4. unresolved imports: a ``lessor.*`` module that does not exist (for example an
   import inside a function that still names a module which has moved).

Exit code 1 if there is an import of the CLI from below it, a runtime cycle or
an unresolved import; 0 otherwise. Upward imports, type-level cycles and
modules in no layer (a new top-level module: add it to ``LAYERS``) are
reported and do not fail the check.

The layers, lowest first (a module may import its own layer and the ones below):

=====  ========================  ==================================================
layer  name                      modules
=====  ========================  ==================================================
0      core                      ``core/*``, ``errors.py`` (the errors ``core`` raises)
1      platform                  ``telemetry.py`` (OpenTelemetry setup),
                                 ``server.py`` (the embedded server),
                                 ``cluster.py`` (a local cluster of them)
2      leasing                   ``leasing/*``, ``doctor.py`` (server checks built on
                                 ``core`` and ``leasing`` only)
3      scheduler                 ``scheduler/*``, ``lessor/__init__.py`` (the public
                                 API it re-exports)
4      simulations, benchmarks   ``simulations/*``, ``benchmarks/*``
5      cli                       ``cli/*``, ``__main__.py``, ``ui/*`` (the dashboard)
6      tools                     ``tools/*`` (developer tools, like this one)
=====  ========================  ==================================================

Limits: an edge goes to the module named, not to the packages above it that
Python also initialises; imports by string (``importlib.import_module``, a
worker's ``--app``) are not seen.

    python -m lessor.tools.imports [--root PATH/TO/lessor] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

# (layer name, module names relative to the package; "" is the package itself)
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("core", "errors")),
    ("platform", ("telemetry", "server", "cluster")),
    ("leasing", ("leasing", "doctor")),
    ("scheduler", ("scheduler", "")),
    ("simulations/benchmarks", ("simulations", "benchmarks")),
    ("cli", ("cli", "__main__", "ui")),
    ("tools", ("tools",)),
)
CLI = "cli"
RUNTIME_KINDS = ("module", "function")


@dataclass(frozen=True)
class Edge:
    """One import statement's edge: ``importer`` imports ``imported`` at ``path:line``."""

    importer: str
    imported: str
    path: str
    line: int
    kind: str  # "module", "function" or "type"

    def __str__(self) -> str:
        where = {"module": "", "function": " (in a function)", "type": " (TYPE_CHECKING)"}[self.kind]
        return f"{self.path}:{self.line}  {self.importer} -> {self.imported}{where}"


@dataclass
class Report:
    """What the check found; ``failed`` says whether it fails."""

    modules: int = 0
    edges: list[Edge] = field(default_factory=list)
    cli_imports: list[Edge] = field(default_factory=list)
    upward: list[Edge] = field(default_factory=list)
    runtime_cycles: list[list[str]] = field(default_factory=list)
    type_cycles: list[list[str]] = field(default_factory=list)
    unresolved: list[Edge] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # modules in no layer (treated as above them all)

    @property
    def failed(self) -> bool:
        return bool(self.cli_imports or self.runtime_cycles or self.unresolved)

    def counts(self) -> dict[str, int]:
        kinds = {k: sum(e.kind == k for e in self.edges) for k in ("module", "function", "type")}
        return {"modules": self.modules, "imports": len(self.edges), **{f"imports_{k}": n for k, n in kinds.items()},
                "cli_imports": len(self.cli_imports), "upward": len(self.upward),
                "runtime_cycles": len(self.runtime_cycles), "type_cycles": len(self.type_cycles),
                "unresolved": len(self.unresolved), "unlisted": len(self.unlisted)}


# --- reading the package ---------------------------------------------------------------


def find_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the package directory ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collects (names, line, kind) of every import; ``names`` are candidate dotted targets."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.kind = "module"
        self.found: list[tuple[list[str], int, str]] = []

    def _within(self, kind: str, nodes: list[ast.stmt]) -> None:
        outer, self.kind = self.kind, kind if self.kind != "type" else "type"
        for node in nodes:
            self.visit(node)
        self.kind = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._within("function", node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._within("type", node.body)
            self._within(self.kind, node.orelse)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(([alias.name], node.lineno, self.kind))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.module.split(".")
            package = package if self.is_package else package[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        # `from a import b` imports the module a.b if there is one, else the name b of module a
        self.found.append(([f"{base}.{a.name}" for a in node.names if a.name != "*"] + [base], node.lineno,
                           self.kind))


def read_edges(root: Path, modules: dict[str, Path]) -> tuple[list[Edge], list[Edge]]:
    """(edges to existing modules, imports of package modules that do not exist)."""
    package = root.name
    edges, unresolved = [], []
    for module, path in modules.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        shown = str(path.relative_to(root.parent))
        for names, line, kind in visitor.found:
            base = names[-1]
            if base != package and not base.startswith(package + "."):
                continue
            targets = [n for n in names[:-1] if n in modules] or [base]
            for target in targets:
                edge = Edge(module, target, shown, line, kind)
                (edges if target in modules else unresolved).append(edge)
    return edges, unresolved


# --- the rules -------------------------------------------------------------------------


def layer_of(module: str, package: str) -> tuple[int, str]:
    """(layer number, layer name) of a module: the longest matching entry of LAYERS."""
    best = (-1, 0, "")
    for number, (name, members) in enumerate(LAYERS):
        for member in members:
            dotted = f"{package}.{member}" if member else package
            exact_only = member == ""
            if module == dotted or (not exact_only and module.startswith(dotted + ".")):
                if len(dotted) > best[0]:
                    best = (len(dotted), number, name)
    if best[0] < 0:
        return len(LAYERS), "unlisted"
    return best[1], best[2]


def in_cli_layer(module: str, package: str) -> bool:
    return layer_of(module, package)[1] == CLI


def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """The components of more than one module, or of one that imports itself (Tarjan, iterative)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        succ[e.importer].append(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
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
                    if len(component) > 1 or node in succ[node]:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(succ[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(found)


def example_cycle(component: list[str], edges: list[Edge]) -> list[Edge]:
    """One shortest cycle through the component's first module, as its edges."""
    members = set(component)
    start = component[0]
    came: dict[str, Edge] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for e in edges:
            if e.importer != node or e.imported not in members:
                continue
            if e.imported == start:
                path = [e]
                while path[0].importer != start:
                    path.insert(0, came[path[0].importer])
                return path
            if e.imported not in came:
                came[e.imported] = e
                queue.append(e.imported)
    return []


def check(root: Path) -> Report:
    """Read the package at directory ``root`` (its name is the package name) and apply the rules."""
    root = Path(root)
    package = root.name
    modules = find_modules(root)
    edges, unresolved = read_edges(root, modules)
    runtime = [e for e in edges if e.kind in RUNTIME_KINDS]
    report = Report(modules=len(modules), edges=edges, unresolved=unresolved)
    report.cli_imports = [e for e in edges if layer_of(e.imported, package)[1] == CLI
                          and not in_cli_layer(e.importer, package)]
    report.upward = [e for e in edges if layer_of(e.imported, package)[0] > layer_of(e.importer, package)[0]
                     and e not in report.cli_imports]
    report.runtime_cycles = strongly_connected(sorted(modules), runtime)
    report.type_cycles = [c for c in strongly_connected(sorted(modules), edges) if c not in report.runtime_cycles]
    report.unlisted = [m for m in sorted(modules) if layer_of(m, package)[1] == "unlisted"]
    return report


# --- the command -----------------------------------------------------------------------


def render(report: Report, package: str) -> str:
    """The report as text: counts first, then every finding with its file and line."""
    c = report.counts()
    lines = [f"{package} import check: {c['modules']} modules, {c['imports']} imports of {package} modules "
             f"({c['imports_module']} module-level, {c['imports_function']} in functions, "
             f"{c['imports_type']} under TYPE_CHECKING)"]

    def section(title: str, items: list) -> None:
        lines.append(f"{title}: {len(items)}")
        lines.extend(f"  {item}" for item in items)

    section(f"imports of {package}.cli from below the CLI", report.cli_imports)
    section("upward imports across layers",
            [f"{e}  [{layer_of(e.importer, package)[1]} -> {layer_of(e.imported, package)[1]}]"
             for e in report.upward])
    runtime = [e for e in report.edges if e.kind in RUNTIME_KINDS]
    for title, cycles, pool in (("runtime import cycles", report.runtime_cycles, runtime),
                                ("type-level import cycles (closed only by TYPE_CHECKING imports)",
                                 report.type_cycles, report.edges)):
        lines.append(f"{title}: {len(cycles)}")
        for component in cycles:
            lines.append(f"  {', '.join(component)}; e.g.:")
            lines.extend(f"    {e}" for e in example_cycle(component, pool))
    section(f"imports of {package} modules that do not exist", report.unresolved)
    section("modules in no layer (add them to LAYERS)", report.unlisted)
    lines.append("FAILED: imports of the CLI from below it, runtime cycles and unresolved imports fail the check"
                 if report.failed else "ok")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check; print the report; 1 if it failed, else 0."""
    parser = argparse.ArgumentParser(prog="python -m lessor.tools.imports", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the package directory to check (default: the installed lessor)")
    parser.add_argument("--json", action="store_true", help="counts and findings as one JSON object")
    args = parser.parse_args(argv)
    report = check(args.root)
    if args.json:
        print(json.dumps(report.counts() | {
            "cli_imports": [asdict(e) for e in report.cli_imports], "upward": [asdict(e) for e in report.upward],
            "runtime_cycles": report.runtime_cycles, "type_cycles": report.type_cycles,
            "unresolved": [asdict(e) for e in report.unresolved], "unlisted": report.unlisted,
            "failed": report.failed}))
    else:
        print(render(report, args.root.name))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
