"""What an installed release offers, read from its source without importing it.

An adapter states what it needs from a release as :class:`Need` s: a module, optionally a name in it (a
function, a class, a method ``Class.method``, a module global) and the parameters a callable must accept.
:func:`missing` checks them against the installed source with :mod:`ast`, so the check costs
milliseconds, needs neither torch_npu nor vLLM's platform, and can run in the pytest process, which never
imports a system under test.

Worked example, vllm-ascend main (2026-08) against the layer-sharding adapter's needs::

    >>> needs = [Need("vllm_ascend.ops.layer_shard_linear", "register_layer_to_shard_weight_series")]
    >>> missing(needs)                                            # doctest: +SKIP
    ['vllm_ascend.ops.layer_shard_linear: no such module']

A name the module only imports from elsewhere (``from .x import f``) is followed to where it is defined; a
name bound in a way the probe cannot read (``f = make()``) counts as present with its parameters unknown.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import os

from ascend_conformance.sut import installed


@dataclasses.dataclass(frozen=True)
class Need:
    """``module`` must exist; ``name`` (optional, dotted for a method) must be defined in it; a callable
    must accept every parameter of ``params`` by name (``*args`` / ``**kwargs`` accept anything)."""

    module: str
    name: str | None = None
    params: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f"{self.module}.{self.name}" if self.name else self.module
        return f"{where}({', '.join(self.params)})" if self.params else where


def source_file(module: str) -> str | None:
    """The file of ``module`` in the installed package tree (``x/y.py`` or ``x/y/__init__.py``), or None."""
    top, *rest = module.split(".")
    location = installed.package_location(top)
    if location is None:
        return None
    base = os.path.join(location, top, *rest)
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


@functools.lru_cache(maxsize=256)
def _tree(path: str, mtime: float) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _module_tree(module: str) -> ast.Module | None:
    path = source_file(module)
    if path is None:
        return None
    return _tree(path, os.path.getmtime(path))


def _resolve_relative(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _definition(module: str, name: str, depth: int = 0):
    """The AST node defining ``name`` in ``module`` (following ``from ... import``), ``True`` when bound in a
    way the probe cannot read, or None when absent."""
    tree = _module_tree(module)
    if tree is None or depth > 5:
        return None
    path = source_file(module)
    is_package = path is not None and path.endswith("__init__.py")
    head, _, tail = name.partition(".")
    found = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == head:
            found = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == head for t in targets):
                found = True
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == head:
                    source = _resolve_relative(module, node, is_package)
                    found = _definition(source, alias.name, depth + 1) if source else True
                    if found is None:  # a submodule imported by name
                        found = True if _module_tree(f"{source}.{alias.name}") is not None else None
        elif isinstance(node, ast.Try):
            for inner in node.body:  # "try: from x import f" (an optional import): present if it is there
                if isinstance(inner, ast.ImportFrom) and any((a.asname or a.name) == head for a in inner.names):
                    found = True
    if not tail or found is None or found is True:
        return found
    if isinstance(found, ast.ClassDef):
        for node in found.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == tail:
                return node
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == tail for t in targets):
                    return True
        return None
    return True


def accepts(node, params: tuple[str, ...]) -> list[str]:
    """The parameters of ``params`` a function definition does not accept by name."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return []
    arguments = node.args
    if arguments.kwarg is not None:
        return []
    names = {a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs}
    return [p for p in params if p not in names]


def missing(needs) -> list[str]:
    """One line per need the installed release does not meet (empty when it meets them all)."""
    problems = []
    for need in needs:
        if _module_tree(need.module) is None:
            problems.append(f"{need.module}: no such module")
            continue
        if need.name is None:
            continue
        node = _definition(need.module, need.name)
        if node is None:
            problems.append(f"{need.module}.{need.name}: not defined")
            continue
        if isinstance(node, ast.ClassDef):
            node = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        unaccepted = accepts(node, need.params) if need.params else []
        if unaccepted:
            problems.append(f"{need.module}.{need.name}: takes no parameter {', '.join(unaccepted)}")
    return problems


__all__ = ["Need", "missing", "source_file", "accepts"]
