"""The import structure of the product's packages: cycles, layering rules and the largest modules.

``python tools/import_graph.py`` prints the largest modules (lines), every import cycle between
modules (imports inside functions count too: a lazy import still ties two modules together) and
every import that breaks a layering rule (:data:`RULES`); it exits 1 when there is a cycle or a
broken rule. ``tests/test_architecture.py`` runs the same checks. Generated protobuf modules are
left out. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("powerbandit", "optimizer_server", "client_sdk", "simulations")


@dataclass(frozen=True)
class Rule:
    """Modules under ``importer`` (a dotted prefix) must not import modules under ``forbidden``."""

    importer: str
    forbidden: str
    why: str
    exempt: tuple[str, ...] = ()


RULES: tuple[Rule, ...] = (
    Rule("powerbandit.domain", "", "the domain model is standard library only"),
    Rule("powerbandit.v1", "", "the generated API is the lowest layer"),
    Rule("powerbandit.addresses", "", "address parsing is standard library only"),
    Rule("powerbandit.proto_conversion", "optimizer_server", "conversion sits below the server"),
    Rule("powerbandit.proto_conversion", "client_sdk", "conversion sits below the SDK"),
    Rule("client_sdk", "powerbandit.cli", "the SDK never imports the application"),
    Rule("client_sdk", "optimizer_server", "the SDK installs without the server"),
    Rule("client_sdk", "simulations", "the SDK installs without the simulator"),
    Rule("optimizer_server", "powerbandit.cli", "the server never imports the application"),
    Rule("optimizer_server", "client_sdk", "the server does not depend on the SDK"),
    Rule("optimizer_server", "simulations", "the server does not depend on the simulator"),
    Rule("powerbandit.agent", "powerbandit.cli", "the node agent never imports the application"),
    Rule("simulations", "powerbandit.cli", "the simulator never imports the application", ("simulations.cli",)),
    Rule("optimizer_server.policy", "optimizer_server.store", "policies are pure: no storage"),
    Rule("optimizer_server.policy", "optimizer_server.service", "policies are pure: no service"),
    Rule("optimizer_server.policy", "grpc", "policies are pure: no RPC"),
)


def _is_generated(path: Path) -> bool:
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))


def module_files(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every non-generated module of :data:`PACKAGES`."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if _is_generated(path) or "data" in path.relative_to(root).parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every dotted name an ``import`` or ``from ... import`` anywhere in ``tree`` reaches."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                yield f"{prefix}.{alias.name}"
            yield prefix


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` names (``a.b.c`` -> ``a.b`` when ``c`` is an attribute)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path = REPO_ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> project modules it imports, module -> every dotted name it imports)."""
    modules = module_files(root)
    edges: dict[str, set[str]] = {}
    raw: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = set(_imported_names(tree, module, path.name == "__init__.py"))
        raw[module] = names
        targets = {_resolve(n, modules) for n in names}
        edges[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return edges, raw


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
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

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return sorted(found)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def broken_rules(edges: dict[str, set[str]], raw: dict[str, set[str]]) -> list[str]:
    """One line per import that breaks a rule of :data:`RULES`."""
    out = []
    project = set(PACKAGES)
    for rule in RULES:
        for module in sorted(edges):
            if not _under(module, rule.importer) or any(_under(module, e) for e in rule.exempt):
                continue
            if rule.forbidden == "":  # nothing of the project beyond itself, no third-party package
                bad = sorted(
                    n
                    for n in raw[module]
                    if n.split(".")[0] in project and not _under(n, rule.importer)
                    or (n and n.split(".")[0] not in project and n.split(".")[0] not in sys.stdlib_module_names)
                )
                if rule.importer == "powerbandit.v1":  # generated code: protobuf and grpc are its runtime
                    bad = [n for n in bad if n.split(".")[0] not in ("google", "grpc")]
            else:
                bad = sorted(n for n in raw[module] if _under(n, rule.forbidden))
            out.extend(f"{module} imports {n}: {rule.why}" for n in bad)
    return out


def largest_modules(count: int, root: Path = REPO_ROOT) -> list[tuple[str, int]]:
    """The ``count`` longest modules: (path relative to the repository, lines)."""
    sizes = [
        (str(path.relative_to(root)), len(path.read_text(encoding="utf-8").splitlines()))
        for path in module_files(root).values()
    ]
    return sorted(sizes, key=lambda item: (-item[1], item[0]))[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--largest", type=int, default=12, help="how many of the largest modules to list")
    args = parser.parse_args(argv)
    edges, raw = import_graph()
    print(f"largest modules (lines), of {len(edges)}:")
    for path, lines in largest_modules(args.largest):
        print(f"  {lines:5d}  {path}")
    found = cycles(edges)
    print(f"import cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    broken = broken_rules(edges, raw)
    print(f"layering rules broken: {len(broken)}")
    for line in broken:
        print("  " + line)
    return 1 if found or broken else 0


if __name__ == "__main__":
    sys.exit(main())
