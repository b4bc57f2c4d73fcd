"""dvc.yaml's deps list every sod module a stage's code imports, so a code change reruns the stages it touches.

For each stage whose command is ``sod <stage>``, the static import closure of ``sod/stages/<stage>.py`` (every
``import sod...`` / ``from sod... import ...``, including imports inside functions) must be covered by the
stage's ``deps``: the module file itself or a directory dep above it. Otherwise ``dvc.lock`` could pair old
outputs with new code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _module_file(module: str) -> Path | None:
    """``sod.data.coco`` -> ``sod/data/coco.py`` (or the package's ``__init__.py``); None if not a sod module."""
    path = ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_modules(source: Path) -> set[str]:
    """Dotted names of the sod modules ``source`` imports at run time (``if TYPE_CHECKING:`` blocks excluded)."""
    tree = ast.parse(source.read_text(), filename=str(source))
    skip = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block) for n in ast.walk(block)}
    package = ".".join(source.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            found.add(stem)
            # `from sod.models import sr` imports the module sod.models.sr
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "sod" or m.startswith("sod.")}


def import_closure(entry: Path) -> set[Path]:
    """Every sod source file ``entry`` reaches through imports, ``entry`` included (repo-relative paths).

    Package ``__init__.py`` files count only when they hold more than a docstring and ``__version__``.
    """
    todo, seen = [entry], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            file = _module_file(module)
            if file is not None and file not in seen:
                todo.append(file)
    return {p.relative_to(ROOT) for p in seen if p.name != "__init__.py" or _has_code(p)}


def _has_code(init: Path) -> bool:
    body = ast.parse(init.read_text()).body
    trivial = (ast.Expr, ast.Assign)  # docstring, __version__
    return any(not isinstance(stmt, trivial) for stmt in body)


def _sod_stages() -> list[tuple[str, str, list[str]]]:
    """(dvc stage name, sod stage module path, deps) for every ``sod <stage>`` command in dvc.yaml."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    rows = []
    for name, stage in spec["stages"].items():
        words = stage["cmd"].split()
        assert words[0] == "sod", f"stage {name}: command does not start with `sod`"
        module = f"sod/stages/{words[1].replace('-', '_')}.py"
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
        rows.append((name, module, deps))
    return rows


def uncovered(closure: set[Path], deps: list[str]) -> list[str]:
    """The files of ``closure`` that no dep names, either as the file itself or as a directory above it."""
    dep_paths = [Path(d.rstrip("/")) for d in deps]
    return sorted(str(f) for f in closure if not any(f == d or d in f.parents for d in dep_paths))


@pytest.mark.parametrize(("stage", "module", "deps"), _sod_stages(), ids=[s[0] for s in _sod_stages()])
def test_stage_deps_cover_import_closure(stage: str, module: str, deps: list[str]) -> None:
    entry = ROOT / module
    assert entry.is_file(), f"stage {stage}: {module} does not exist"
    missing = uncovered(import_closure(entry), deps)
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not depend on: {', '.join(missing)}"


def test_closure_follows_from_imports_and_lazy_imports(tmp_path: Path) -> None:
    """The closure sees `from sod.x import module`, plain imports and imports inside functions."""
    closure = import_closure(ROOT / "sod/stages/train_detector.py")
    assert Path("sod/stages/train_detector.py") in closure
    assert Path("sod/engine.py") in closure
    assert Path("sod/config.py") in closure


def test_uncovered_by_hand() -> None:
    closure = {Path("sod/a.py"), Path("sod/models/b.py"), Path("sod/evaluation/c.py")}
    assert uncovered(closure, ["sod/a.py", "sod/models", "data/prepared"]) == ["sod/evaluation/c.py"]
    assert uncovered(closure, ["sod"]) == []
    # a dep on a sibling file does not cover
    assert uncovered({Path("sod/models/b.py")}, ["sod/models/bb.py"]) == ["sod/models/b.py"]
