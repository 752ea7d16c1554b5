"""The package's layers import downwards only, and only cli/ parses command lines.

Layers, lowest first: the top-level helpers (labels, runtime), models, faces, data, training,
inference, cli. A module may import its own layer and the ones below it; the thin entry points
at the top (``fer_lightning.train`` ...) and the public alias ``fer_lightning.checkpoints`` sit
above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fer_lightning

PACKAGE = Path(fer_lightning.__file__).parent
LAYERS = ["base", "models", "faces", "data", "training", "inference", "serve", "cli"]
ENTRY_POINTS = {"train", "eval", "predict", "export", "checkpoints", "__init__"}
# Importing these, or reading sys.argv, is parsing a command line.
ARGUMENT_PARSERS = {"argparse", "click", "typer", "fire", "docopt"}


def layer_of(module: str) -> str | None:
    """``fer_lightning.models.resnet`` -> ``models``; top-level helpers -> ``base``."""
    parts = module.split(".")
    if parts[0] != "fer_lightning":
        return None
    if len(parts) == 1:
        return "entry"
    if parts[1] in LAYERS:
        return parts[1]
    return "entry" if parts[1] in ENTRY_POINTS else "base"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__main__":
        return ".".join(parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_layers_import_downwards_only():
    violations = []
    for path in sources():
        name = module_name(path)
        own = layer_of(name)
        if own == "entry" or name.endswith("__main__"):
            continue  # entry points may import anything
        for lineno, imported in imported_modules(ast.parse(path.read_text())):
            target = layer_of(imported)
            if target is None or target == own:
                continue
            if target == "entry" or LAYERS.index(target) > LAYERS.index(own):
                where = f"{path.relative_to(PACKAGE)}:{lineno}"
                violations.append(f"{where} ({own}) imports {imported}")
    assert not violations, "\n".join(violations)


def test_the_layering_check_sees_a_violation(tmp_path):
    """The check above can fail: an upward import in a sample module is reported."""
    tree = ast.parse("from fer_lightning.inference import EmotionRecognizer\nimport numpy\n")
    imports = imported_modules(tree)
    assert imports == [(1, "fer_lightning.inference"), (2, "numpy")]
    assert LAYERS.index(layer_of(imports[0][1])) > LAYERS.index(layer_of("fer_lightning.data.x"))


def test_only_cli_parses_command_lines():
    offenders = []
    for path in sources():
        name = module_name(path)
        if layer_of(name) in ("cli", "entry") or name.endswith("__main__"):
            continue
        text = path.read_text()
        tree = ast.parse(text)
        for lineno, imported in imported_modules(tree):
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
