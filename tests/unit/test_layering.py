"""The package's layers import downwards only, no modules import each other in a circle, and
only cli/ parses command lines.

Layers, lowest first: the top-level helpers (labels, runtime), models, faces, data, training,
inference, serve, cli. A module may import its own layer and the ones below it; the thin entry
points at the top (``fer_lightning.train`` ...) and the public alias ``fer_lightning.checkpoints``
sit above everything. Circles are looked for between modules, whatever their layer, counting
imports inside functions and under ``TYPE_CHECKING`` as well: a circle hidden in a function is
still two modules that cannot be understood, tested or moved one without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

import fer_lightning

PACKAGE = Path(fer_lightning.__file__).parent
LAYERS = ["base", "models", "faces", "data", "training", "inference", "serve", "cli"]
ENTRY_POINTS = {"train", "eval", "predict", "export", "checkpoints", "__init__"}
# Importing these, or reading sys.argv, is parsing a command line.
ARGUMENT_PARSERS = {"argparse", "click", "typer", "fire", "docopt"}


@dataclass(frozen=True)
class Import:
    """``source`` imports ``target`` (both dotted module names) at ``where`` (file:line)."""

    source: str
    target: str
    where: str

    def __str__(self) -> str:
        return f"{self.where} ({self.source}) imports {self.target}"


def layer_of(module: str) -> str | None:
    """``fer_lightning.models.resnet`` -> ``models``; top-level helpers -> ``base``; modules of
    other packages -> ``None``."""
    parts = module.split(".")
    if parts[0] != "fer_lightning":
        return None
    if len(parts) == 1:
        return "entry"
    if parts[1] in LAYERS:
        return parts[1]
    return "entry" if parts[1] in ENTRY_POINTS else "base"


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the module in ``path``, a file under ``root`` (the folder holding the
    package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``tree`` (module-level or not), relative imports
    resolved; ``from package import name`` gives ``package.name``, which is kept where it names
    a module (see :func:`project_imports`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def project_imports(root: Path, package: str = "fer_lightning") -> list[Import]:
    """Every import of one of ``package``'s modules by another, found in the files under
    ``root / package``. ``from a import b`` counts as importing module ``a.b`` when that is a
    module, else as importing ``a``."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    found: list[Import] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        names = imported_modules(tree, module, is_package)
        for lineno, name in names:
            if name not in files:
                continue
            # `from a import b`: both "a" and "a.b" were listed; keep "a" only when "b" is not
            # a module of its own.
            submodules = [n for ln, n in names if ln == lineno and n.startswith(name + ".")]
            if submodules and all(n in files for n in submodules):
                continue
            where = f"{path.relative_to(root).as_posix()}:{lineno}"
            found.append(Import(module, name, where))
    return found


def upward_imports(imports: Iterable[Import]) -> list[Import]:
    """Imports of a higher layer (or of an entry point) by a lower one."""
    violations = []
    for imp in imports:
        own, target = layer_of(imp.source), layer_of(imp.target)
        if own == "entry" or imp.source.endswith("__main__") or target in (None, own):
            continue  # entry points may import anything
        if target == "entry" or LAYERS.index(target) > LAYERS.index(own):
            violations.append(imp)
    return violations


def _graph(imports: Iterable[Import]) -> nx.MultiDiGraph:
    graph = nx.MultiDiGraph()
    for imp in imports:
        if imp.source != imp.target:
            graph.add_edge(imp.source, imp.target, imp=imp)
    return graph


def import_cycles(imports: Iterable[Import]) -> list[list[Import]]:
    """One circle of imports for each group of modules that import each other, as the chain of
    imports that closes it (a -> b -> ... -> a)."""
    graph = _graph(imports)
    cycles = []
    for group in nx.strongly_connected_components(graph):
        if len(group) > 1:
            edges = nx.find_cycle(graph.subgraph(group))
            cycles.append([graph.edges[a, b, key]["imp"] for a, b, key in edges])
    return sorted(cycles, key=lambda cycle: cycle[0].source)


def _report(cycles: list[list[Import]], imports: list[Import]) -> str:
    """Each circle, then every import between the modules of its group (file:line), so that
    the one to remove can be chosen."""
    graph = _graph(imports)
    blocks = []
    for cycle in cycles:
        group = {imp.source for imp in cycle}
        inside = sorted(
            (data["imp"] for _, _, data in graph.subgraph(group).edges(data=True)), key=str
        )
        chain = " -> ".join([cycle[0].source, *(imp.target for imp in cycle)])
        blocks.append(chain + "".join(f"\n    {imp}" for imp in inside))
    return "\n".join(blocks)


def test_layers_import_downwards_only():
    violations = upward_imports(project_imports(PACKAGE.parent))
    assert not violations, "\n".join(map(str, violations))


def test_no_modules_import_each_other():
    imports = project_imports(PACKAGE.parent)
    cycles = import_cycles(imports)
    assert not cycles, _report(cycles, imports)


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "fer_lightning" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_see_a_planted_upward_import_and_a_planted_circle(tmp_path):
    """The checks above can fail: they run on a small fake package with one upward import
    (data -> inference) and one circle hidden in a function (models.a -> models.b -> models.a,
    one layer), beside imports that are allowed."""
    root = _plant(
        tmp_path,
        {
            "__init__.py": "",
            "labels.py": "",
            "models/__init__.py": "from fer_lightning.models.a import A\n",
            "models/a.py": "from fer_lightning import labels\nfrom . import b\nA = 1\n",
            "models/b.py": "def f():\n    from fer_lightning.models.a import A\n    return A\n",
            "data/__init__.py": "",
            "data/loader.py": "import numpy\nfrom fer_lightning.models import A\n"
            "from fer_lightning.inference.api import run\n",
            "inference/__init__.py": "",
            "inference/api.py": "from fer_lightning.data import loader\nrun = 1\n",
        },
    )
    imports = project_imports(root)
    assert [str(i) for i in upward_imports(imports)] == [
        "fer_lightning/data/loader.py:3 (fer_lightning.data.loader) imports "
        "fer_lightning.inference.api"
    ]
    cycles = import_cycles(imports)
    assert [{(i.source, i.target) for i in cycle} for cycle in cycles] == [
        {
            ("fer_lightning.data.loader", "fer_lightning.inference.api"),
            ("fer_lightning.inference.api", "fer_lightning.data.loader"),
        },
        {
            ("fer_lightning.models.a", "fer_lightning.models.b"),
            ("fer_lightning.models.b", "fer_lightning.models.a"),
        },
    ]
    report = _report(cycles, imports)
    assert (
        "fer_lightning/models/b.py:2 (fer_lightning.models.b) imports fer_lightning.models.a"
        in report
    )
    assert "fer_lightning/inference/api.py:1" in report and "labels" not in report


def test_only_cli_parses_command_lines():
    offenders = []
    root = PACKAGE.parent
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path, root)
        if layer_of(name) in ("cli", "entry") or name.endswith("__main__"):
            continue
        text = path.read_text()
        tree = ast.parse(text)
        for lineno, imported in imported_modules(tree, name, path.name == "__init__.py"):
            if imported.split(".")[0] in ARGUMENT_PARSERS or imported == "hydra.main":
                offenders.append(f"{path.relative_to(PACKAGE)}:{lineno} imports {imported}")
        for node in ast.walk(tree):
            is_argv = isinstance(node, ast.Attribute) and node.attr == "argv"
            is_hydra_main = (
                isinstance(node, ast.Attribute)
                and node.attr == "main"
                and (isinstance(node.value, ast.Name) and node.value.id == "hydra")
            )
            if is_argv or is_hydra_main:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses {node.attr}")
    assert not offenders, "\n".join(offenders)
