"""The documentation site builds with ``--strict`` and documents what the code declares (issue 31).

``mkdocs build --strict`` (what ``make docs`` runs) into a temporary folder: a broken link, a missing page or
image, an unknown generated block or any other warning fails it. Then every trigger param of
``beam_jobs.nightly.params.table()`` and every flag of every job (``beam_jobs.config``'s dataclass fields and
``beam_jobs.search``'s parser) must have its row in the built HTML: the rows are rendered from the code by
``docs/hooks.py``, so a param or flag added to the code appears by itself, and one the hook fails to render
fails here. Plus: no page of the README's links into the docs is missing, and the README stays short.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # ~10 s: the whole site is built


def load_hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", os.path.join(ROOT, "docs", "hooks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    mkdocs = os.path.join(os.path.dirname(sys.executable), "mkdocs")
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-5000:]
    return out


def page(site: Path, name: str) -> str:
    return (site / name).read_text(encoding="utf-8")


def test_every_trigger_param_has_its_row(site):
    from beam_jobs.nightly.params import SECTIONS, table

    html = page(site, "dag.html")
    params = table(load_hooks().example_deployment())
    missing = [name for name in params if f"id='param-{name}'" not in html]
    assert not missing, f"trigger params without a row in dag.html: {missing}"
    for section in SECTIONS:
        assert f">{section}</h3>" in html or f">{section}<a" in html, section
    # The row says the default the table declares.
    row = re.search(r"<tr id='param-batch_size'>(.*?)</tr>", html, re.S).group(1)
    assert f"<code>{params['batch_size'].default}</code>" in row


def test_every_job_flag_has_its_row(site):
    pages = {"extract": "extraction.html", "reduce": "maps.html", "index": "search.html",
             "compare": "compare.html", "search": "search.html"}  # fmt: skip
    flags = load_hooks().job_flag_names()
    assert set(flags) == set(pages)
    missing = {
        job: [name for name in names if f"id='flag-{job}-{name}'" not in page(site, pages[job])]
        for job, names in flags.items()
    }
    assert not any(missing.values()), f"flags without a row: {missing}"
    # The names come from the code, not from the hook alone: a few known flags of each job.
    for job, known in (("extract", "skip_known"), ("reduce", "mosaic_grid"), ("index", "duplicate_threshold"),
                       ("compare", "sample_size"), ("search", "vector-from")):  # fmt: skip
        assert known in flags[job], (job, known)


def test_output_files_and_machine_costs_are_rendered_from_the_code(site):
    from beam_jobs import contract
    from beam_jobs.nightly.cost import PRICES_AS_OF

    outputs = page(site, "outputs.html")
    for name in (contract.MANIFEST, contract.MAP_MOSAIC, contract.INDEX_FILE, contract.COMPARISON_JSON,
                 contract.RUN_RECORD, contract.EMBEDDING_FILES):  # fmt: skip
        assert f"<code>{name}</code>" in outputs, name
    for column, _ in contract.EMBEDDING_COLUMNS:
        assert f"<code>{column}</code>" in outputs, column
    # Each file's and column's note comes from its comment in the contract package's modules.
    assert "faiss index over the window" in outputs  # INDEX_FILE's comment (contract/layout.py)
    # The records' tables show each field's type as written, not a ForwardRef repr.
    architecture = page(site, "architecture.html")
    assert "<code>dict[str, ModelFigures]</code>" in architecture
    assert "ForwardRef" not in architecture
    dataflow = page(site, "dataflow.html")
    assert PRICES_AS_OF in dataflow
    assert dataflow.count("<strong>measured</strong>") >= 2
    assert "<em>estimate</em>" in dataflow


def test_no_generated_block_is_left_unrendered(site):
    leftovers = [p.name for p in site.glob("*.html") if "generated:" in p.read_text(encoding="utf-8")]
    assert not leftovers


def test_readme_is_short_and_its_links_into_the_docs_exist():
    readme = Path(ROOT, "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 220
    assert "```mermaid" in readme
    targets = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert targets, "the README links into the docs"
    missing = [t for t in targets if not Path(ROOT, t).exists()]
    assert not missing, missing
