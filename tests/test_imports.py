"""No job package imports another: each job reads what others wrote through shared modules only.

A job package is a package under ``beam_jobs/`` with a ``__main__.py`` (``python -m beam_jobs.<job>``):
extract_embeddings, reduce_dim, build_index, compare, and any added later. Walks the source (AST, nothing
imported), every import statement anywhere in a module (inside functions too), and follows the shared
modules a job imports (partitions, storage, thumbnails, ...), so a job cannot reach another through them.
"""

from __future__ import annotations

import ast
import os
from collections import deque

from tests.conftest import ROOT

PACKAGE = "beam_jobs"
KNOWN_JOBS = {"extract_embeddings", "reduce_dim", "build_index", "compare"}


def job_packages(root: str = ROOT) -> set[str]:
    base = os.path.join(root, PACKAGE)
    return {
        name
        for name in os.listdir(base)
        if os.path.isfile(os.path.join(base, name, "__init__.py"))
        and os.path.isfile(os.path.join(base, name, "__main__.py"))
    }


def module_sources(root: str = ROOT) -> dict[str, str]:
    """Dotted module name -> source path, for every module of the package."""
    out = {}
    for folder, dirs, files in os.walk(os.path.join(root, PACKAGE)):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), root)[: -len(".py")].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, name)
    return out


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source``; names resolved to the longest known module."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod.
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin for alias in node.names
            ]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts:
                found.append((node.lineno, ".".join(parts)))
    return found


def job_of(module: str, jobs: set[str]) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE and parts[1] in jobs else None


def crossings(sources: dict[str, str], texts: dict[str, str], jobs: set[str]) -> list[str]:
    """Every way a job package's module reaches another job package: directly, or through shared modules."""
    known = set(sources)
    graph = {
        module: imports_of(texts[module], module, path.endswith("__init__.py"), known)
        for module, path in sources.items()
    }
    problems = []
    for start in sorted(sources):
        own = job_of(start, jobs)
        if own is None:
            continue
        seen = {start}
        queue = deque([(start, [start])])
        while queue:
            module, path = queue.popleft()
            for line, target in graph[module]:
                other = job_of(target, jobs)
                if other == own or target in seen:
                    continue
                if other is not None:
                    where = f"{os.path.relpath(sources[module], ROOT)}:{line}"
                    problems.append(f"{' -> '.join([*path, target])} ({where})")
                    continue
                seen.add(target)
                queue.append((target, [*path, target]))
    return sorted(set(problems))


def test_the_job_packages_are_found():
    assert job_packages() >= KNOWN_JOBS


def test_no_job_package_imports_another():
    sources = module_sources()
    texts = {}
    for module, path in sources.items():
        with open(path, encoding="utf-8") as handle:
            texts[module] = handle.read()
    problems = crossings(sources, texts, job_packages())
    assert not problems, "a job package imports another:\n" + "\n".join(problems)


def test_the_check_catches_direct_indirect_relative_and_lazy_imports():
    """The control: a tree that breaks the rule in each way is caught, each way once."""
    jobs = {"job_a", "job_b"}
    texts = {
        "beam_jobs": "",
        "beam_jobs.shared": "def f():\n    from beam_jobs.job_b import pipeline\n",  # a lazy import, shared
        "beam_jobs.clean": "import json\nfrom beam_jobs import shared\n",
        "beam_jobs.job_a": "",
        "beam_jobs.job_a.direct": "import beam_jobs.job_b.pipeline\n",
        "beam_jobs.job_a.package": "from beam_jobs import job_b\n",
        "beam_jobs.job_a.relative": "from ..job_b.pipeline import run\n",
        "beam_jobs.job_a.indirect": "from beam_jobs.clean import f\n",
        "beam_jobs.job_a.own": "from beam_jobs.job_a import direct\nfrom . import relative\n",
        "beam_jobs.job_b": "",
        "beam_jobs.job_b.pipeline": "from beam_jobs.shared import f\n",
    }
    packages = {"beam_jobs", "beam_jobs.job_a", "beam_jobs.job_b"}
    sources = {m: "/x/" + m.replace(".", "/") + ("/__init__.py" if m in packages else ".py") for m in texts}
    problems = crossings(sources, texts, jobs)
    assert [p.split(" (")[0] for p in problems] == [
        "beam_jobs.job_a.direct -> beam_jobs.job_b.pipeline",
        "beam_jobs.job_a.indirect -> beam_jobs.clean -> beam_jobs.shared -> beam_jobs.job_b.pipeline",
        "beam_jobs.job_a.package -> beam_jobs.job_b",
        "beam_jobs.job_a.relative -> beam_jobs.job_b.pipeline",
    ]
