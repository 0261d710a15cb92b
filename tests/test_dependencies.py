"""The package declares what its jobs import (issue 28).

Workers install the package, not the lock: ``worker.Dockerfile`` runs ``pip install --constraint
requirements.txt .[kfp]`` and Dataflow's ``--setup_file`` path installs the sdist with its dependencies. A
constraint file adds no package, so a module that ``beam_jobs`` imports but ``pyproject.toml`` does not
declare is missing on every worker while every local test (run in the whole lock) passes.

This test reads the imports from the source (the AST of every module under ``beam_jobs/``, plus the Keras
builders ``MODEL_SPECS`` names as strings) and maps each to the distribution that installs it through
``importlib.metadata.packages_distributions()``. Each must be in ``[project].dependencies``, or in an extra
of ``[project.optional-dependencies]`` and then imported lazily (inside a function, under a ``try`` whose
``except ImportError`` names the extra, e.g. ``[hub]``), so that a worker without it fails only where it is
needed, with one line that says what to install.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "beam_jobs"
FIRST_PARTY = {"beam_jobs", "__future__"}


def normalize(name: str) -> str:
    """PEP 503 names: 'Pillow', 'faiss_cpu' and 'tf.keras' compare as 'pillow', 'faiss-cpu', 'tf-keras'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """'apache-beam[gcp]>=2.77,<2.78' -> 'apache-beam'."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot read a distribution name from {requirement!r}"
    return normalize(match.group(1))


def declared(pyproject: Path) -> tuple[set[str], dict[str, set[str]]]:
    """(the dependencies, {extra: its distributions}) of pyproject's [project] table."""
    project = tomllib.loads(pyproject.read_text())["project"]
    required = {requirement_name(r) for r in project.get("dependencies", [])}
    extras = {
        extra: {requirement_name(r) for r in reqs} for extra, reqs in project.get("optional-dependencies", {}).items()
    }
    return required, extras


@dataclass(frozen=True)
class Import:
    module: str  # dotted: 'google.cloud.dataflow_v1beta3', 'PIL.Image', 'faiss'
    where: str  # 'beam_jobs/build_index/ann.py:12'
    lazy: bool  # inside a function body (so importing the module does not import it)
    handler_text: str  # the string constants of the `except ImportError` handlers around it ('' if none)


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, where: str) -> None:
        self.where = where
        self.depth = 0  # function nesting
        self.handlers: list[str] = []  # texts of the enclosing try statements' ImportError handlers
        self.found: list[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Try(self, node: ast.Try) -> None:
        text = " ".join(
            c.value
            for h in node.handlers
            if _catches_import_error(h)
            for c in ast.walk(h)
            if isinstance(c, ast.Constant) and isinstance(c.value, str)
        )
        self.handlers.append(text)
        for child in node.body:
            self.visit(child)
        self.handlers.pop()
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    visit_TryStar = visit_Try

    def _add(self, module: str, line: int) -> None:
        if module.split(".")[0] in FIRST_PARTY or module.split(".")[0] in sys.stdlib_module_names:
            return
        self.found.append(Import(module, f"{self.where}:{line}", self.depth > 0, " ".join(self.handlers)))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return  # relative: first party
        for alias in node.names:
            # 'from google.cloud import dataflow_v1beta3': the name may be a submodule, which tells which
            # distribution of a namespace package it is (distribution_of tries the longest path first).
            self._add(f"{node.module}.{alias.name}", node.lineno)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception") for n in names)


def source_imports(package: Path = PACKAGE) -> list[Import]:
    """Every third-party import in the package's source, and the modules MODEL_SPECS imports by name."""
    found: list[Import] = []
    for path in sorted(package.rglob("*.py")):
        collector = _ImportCollector(str(path.relative_to(package.parent)))
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found += collector.found
    from beam_jobs.contract import MODEL_SPECS

    for name, spec in MODEL_SPECS.items():
        for dotted in (spec.builder, spec.preprocess):
            # resolve_attr imports these on first use of a registry model: a plain (not optional) need.
            found.append(Import(dotted.rpartition(".")[0], f"MODEL_SPECS[{name!r}]", False, ""))
    return found


@cache
def _top_level_owners() -> dict[str, tuple[str, ...]]:
    return {
        m: tuple(sorted({normalize(d) for d in ds})) for m, ds in importlib.metadata.packages_distributions().items()
    }


def _ships(distribution: str, path: str) -> bool:
    files = importlib.metadata.distribution(distribution).files or ()
    return any(str(f) == path + ".py" or str(f).startswith(path + "/") for f in files)


def distribution_of(module: str) -> str | None:
    """The distribution that installs `module` here (None when none does)."""
    parts = module.split(".")
    owners = _top_level_owners().get(parts[0], ())
    if len(owners) <= 1:
        return owners[0] if owners else None
    # A namespace package (google.*): the one distribution that ships the module's own files.
    for n in range(len(parts), 1, -1):
        shipping = [d for d in owners if _ships(d, "/".join(parts[:n]))]
        if len(shipping) == 1:
            return shipping[0]
    raise AssertionError(f"{module}: cannot tell which of {owners} installs it")


def problems(imports: list[Import], required: set[str], extras: dict[str, set[str]]) -> list[str]:
    """One line per import that a worker installed from pyproject would not have, or not be told about."""
    out = []
    for imp in imports:
        dist = distribution_of(imp.module)
        # Not installed here (the lock leaves optional extras out): the distribution is named as the module is.
        guess = dist or normalize(imp.module.split(".")[0])
        if guess in required:
            continue
        in_extras = sorted(extra for extra, dists in extras.items() if guess in dists)
        if not in_extras:
            state = f"distribution {dist}" if dist else "not installed here"
            out.append(f"{imp.where}: imports {imp.module} ({state}), which pyproject.toml does not declare")
        elif not imp.lazy:
            out.append(f"{imp.where}: {imp.module} is in extra {in_extras} but is imported at module level")
        elif not any(f"[{extra}]" in imp.handler_text for extra in in_extras):
            out.append(
                f"{imp.where}: {imp.module} (extra {in_extras}) is not imported under a try whose "
                f"except ImportError names the extra ({', '.join(f'[{e}]' for e in in_extras)})"
            )
    return out


def test_every_third_party_import_of_beam_jobs_is_declared_by_pyproject():
    imports = source_imports()
    required, extras = declared(ROOT / "pyproject.toml")
    assert problems(imports, required, extras) == []
    # The walk sees what it must: the imports that issue 28 found undeclared, and an optional one.
    modules = {imp.module.split(".")[0] for imp in imports}
    assert {"faiss", "scipy", "tensorflow_hub", "apache_beam", "keras"} <= modules


@pytest.mark.slow  # a fresh interpreter resolving every distribution: ~10 s
def test_the_check_refuses_a_pyproject_without_faiss(tmp_path):
    """The check on its own input: the pyproject of issue 28 (no faiss-cpu) fails it, naming the import."""
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^\s*"faiss-cpu[^"]*",\n', text, re.M)
    without = tmp_path / "pyproject.toml"
    without.write_text(re.sub(r'^\s*"faiss-cpu[^"]*",\n', "", text, flags=re.M))
    imports = source_imports()
    before = problems(imports, *declared(ROOT / "pyproject.toml"))
    added = [line for line in problems(imports, *declared(without)) if line not in before]
    assert added
    assert all("imports faiss (distribution faiss-cpu)" in line for line in added), added


def test_every_range_in_pyproject_admits_the_locked_version():
    """Workers install with ``--constraint requirements.txt``: a range that excludes the lock's pin cannot
    install at all. (Extras the lock leaves out, such as [hub], have no pin to check.)"""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, version = line.partition("==")
            pins[normalize(name.strip())] = version.split(";")[0].strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for rs in project["optional-dependencies"].values() for r in rs)]
    unpinned, refused = [], []
    for text in requirements:
        requirement = Requirement(text)
        pin = pins.get(normalize(requirement.name))
        if pin is None:
            unpinned.append(requirement.name)
        elif not requirement.specifier.contains(pin, prereleases=True):
            refused.append(f"{text} refuses the lock's {pin}")
    assert refused == []
    assert set(unpinned) <= {"tensorflow-hub", "tf-keras"}, unpinned  # the [hub] extra only


def test_optional_imports_must_be_lazy_and_name_their_extra():
    source = (
        "import tensorflow_hub\n"
        "def a():\n    import tensorflow_hub\n"
        "def b():\n    try:\n        import tensorflow_hub\n    except ImportError:\n"
        "        raise SystemExit('install the [hub] extra')\n"
    )
    collector = _ImportCollector("x.py")
    collector.visit(ast.parse(source))
    found = problems(collector.found, set(), {"hub": {"tensorflow-hub"}})
    assert [line.split(":")[1] for line in found] == ["1", "3"]
    assert "imported at module level" in found[0]
    assert "names the extra ([hub])" in found[1]
