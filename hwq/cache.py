"""What hwq can rebuild, and how it knows a cached copy is stale.

Simulator builds, bitstreams and trained example weights live in the user's cache
directory (platformdirs), or in $HWQ_CACHE_DIR; never in the installed package or the
current directory. A cached build is keyed by `source_digest` of the module that
generates it: every hwq source file that module reads, found by following its imports.
"""
from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

import platformdirs


def cache_dir(*parts: str) -> Path:
    """The cache subdirectory `parts`, created if missing."""
    env = os.environ.get("HWQ_CACHE_DIR")
    root = Path(env).expanduser().resolve() if env else Path(platformdirs.user_cache_dir("hwq", appauthor=False))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


PACKAGE_ROOT = Path(__file__).resolve().parent        # the hwq package's directory


def _imports(path: Path) -> set[str]:
    """The hwq modules a source file imports (at any depth of its code)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "hwq"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "hwq":
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}   # submodules by name
    return out


def _source(module: str, root: Path) -> Path | None:
    parts = module.split(".")[1:]
    for path in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


def source_files(module: str, root: Path = PACKAGE_ROOT) -> list[Path]:
    """Every hwq source file that `module` (e.g. "hwq.rtl.export") reads: itself, the
    modules it imports, theirs, and so on, with the packages' __init__ files on the way.
    `root` is the hwq package directory to read them from."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):       # a module's packages run first
            prefix = ".".join(parts[:k])
            path = _source(prefix, root)
            if prefix in seen or path is None:
                continue
            seen[prefix] = path
            if prefix != "hwq":       # the root's imports are its lazy API, not read here
                todo.extend(_imports(path))
    return sorted(seen.values())


def source_digest(module: str, root: Path = PACKAGE_ROOT) -> str:
    """A hash of what source_files(module) hold: it changes when any of them does."""
    h = hashlib.sha256()
    for path in source_files(module, root):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
