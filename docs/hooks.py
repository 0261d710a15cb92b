"""MkDocs hook: the parts of the docs that the code declares are rendered from the code when the site is built.

A page asks for a block with one line of its own, ``<!-- generated: KIND [ARG] -->``:

- ``params``: the trigger-param reference, section by section, from ``beam_jobs.nightly.params.table()`` for
  the example deployment below (each row's anchor is ``param-<name>``);
- ``flags JOB``: a job's flags (``extract``, ``reduce``, ``index``, ``compare`` from their ``beam_jobs.config``
  dataclass fields; ``search`` from ``beam_jobs.search.arg_parser()``), anchors ``flag-<job>-<name>``;
- ``outputs``: the output folders and files of a night and the Parquet columns, from ``beam_jobs.contract``;
- ``records``: the fields of the manifests, the comparison report and the run record (contract's TypedDicts);
- ``machine-costs``: cost per million images per Dataflow CPU kind, from the measured rates below and the dated
  price table in ``beam_jobs.nightly.cost``.

An unknown block fails the build. ``tests/test_docs.py`` builds the site with ``--strict`` and checks that every
param and every flag has its row.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import html
import importlib
import inspect
import json
import pkgutil
import re
from typing import Any

from mkdocs.exceptions import PluginError

GENERATED = re.compile(r"^<!-- generated: ([a-z-]+)(?: ([a-z_]+))? -->$", re.MULTILINE)
# The deployment the param reference is written for (what docker-compose's image sets).
EXAMPLE_DATA = "/opt/airflow/data"
EXAMPLE_DS = "2026-11-20"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def code(value: Any) -> str:
    return f"<code>{esc(value)}</code>"


def table(head: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """An HTML table (cells already escaped); ``rows`` are (row id, cells). Blank lines around it keep the
    Markdown parser out of it."""
    out = ["", "<table>", "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for row_id, cells in rows:
        anchor = f" id='{esc(row_id)}'" if row_id else ""
        out.append(f"<tr{anchor}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out += ["</tbody>", "</table>", ""]
    return "\n".join(out)


def shown(value: Any) -> str:
    """A default as a reader would type it."""
    if value is None:
        return "<em>unset</em>"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool | list | dict):
        return code(json.dumps(value))
    return code(value)


# --------------------------------------------------------------------------- trigger params


def schema_rule(schema: dict[str, Any]) -> str:
    """The range, choices or form of a param's JSON schema, in words."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(code(v) for v in schema["enum"] if v is not None))
    items = schema.get("items") or {}
    if "enum" in items:
        parts.append("one or more of " + ", ".join(code(v) for v in items["enum"]))
    if "minimum" in schema and "maximum" in schema:
        parts.append(f"{schema['minimum']:g} to {schema['maximum']:g}")
    elif "minimum" in schema:
        parts.append(f"&ge; {schema['minimum']:g}")
    if "pattern" in schema and "string" in kinds and not parts:
        parts.append("a path under the allowed roots" if "^" in schema["pattern"][:2] else "matches a pattern")
    if not parts:
        parts.append(" or ".join(k for k in kinds if k != "null"))
    if "null" in kinds:
        parts.append("may be unset")
    return "; ".join(parts)


def example_deployment():
    from beam_jobs.nightly.params import Deployment

    return Deployment(data=EXAMPLE_DATA, weights="imagenet", roots=[EXAMPLE_DATA])


def render_params() -> str:
    from beam_jobs.nightly.params import SECTIONS
    from beam_jobs.nightly.params import table as param_table

    params = param_table(example_deployment())
    out = [
        f"For a deployment with `IMAGE_EMBEDDINGS_DATA={EXAMPLE_DATA}` (the Docker image's), "
        f"`IMAGE_EMBEDDINGS_WEIGHTS=imagenet` and `IMAGE_EMBEDDINGS_ALLOWED_ROOTS={EXAMPLE_DATA}`; "
        "read from `beam_jobs.nightly.params.table()` when this site was built.",
    ]
    for section in SECTIONS:
        rows = [
            (
                f"param-{p.name}",
                [f"{code(p.name)}<br><small>{esc(p.title)}</small>", shown(p.default), schema_rule(p.schema),
                 esc(p.description)],
            )
            for p in params.values()
            if p.section == section
        ]  # fmt: skip
        out += [f"### {section}", table(["param", "default", "range or choices", "description"], rows)]
    missing = [p.name for p in params.values() if p.section not in SECTIONS]
    if missing:
        raise PluginError(f"params in no known section: {missing}")
    return "\n".join(out)


# --------------------------------------------------------------------------- job flags


def config_class(job: str):
    from beam_jobs import config
    from beam_jobs.publish_store.config import StoreConfig
    from beam_jobs.report.config import ReportConfig

    return {
        "extract": config.ExtractConfig,
        "reduce": config.ReduceConfig,
        "index": config.IndexConfig,
        "compare": config.CompareConfig,
        "report": ReportConfig,
        "store": StoreConfig,
    }[job]


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name


def config_flags(cls) -> list[dataclasses.Field]:
    """The dataclass fields that are flags (``option()`` gives them a help text)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def check_text(f: dataclasses.Field) -> str:
    from beam_jobs.config import Range

    choices = f.metadata.get("choices")
    if choices is not None:
        return "one of " + ", ".join(code(getattr(c, "value", c)) for c in choices if c is not None)
    check = f.metadata.get("check")
    if isinstance(check, Range):
        low = f"{check.minimum:g}"
        return f"{low} to {check.maximum:g}" if check.maximum is not None else f"&ge; {low}"
    return "checked before the job starts" if check else ""


def render_config_flags(job: str) -> str:
    cls = config_class(job)
    rows = []
    for f in config_flags(cls):
        name = flag_name(f)
        kind = f.metadata.get("kind")
        if f.default is True:
            spelled = f"--{name} / --no-{name}"
        elif kind is tuple:
            spelled = f"--{name} (repeat)"
        else:
            spelled = f"--{name}"
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            default = "<strong>required</strong>"
        elif f.default is dataclasses.MISSING:
            default = "<em>per run</em>"
        elif f.default == ():
            default = "<em>none</em>"
        else:
            default = shown(f.default)
        group = f.metadata.get("group")
        help_text = esc(f.metadata["help"]) + (f" <small>({esc(group)})</small>" if group else "")
        rows.append((f"flag-{job}-{name}", [code(spelled), default, check_text(f), help_text]))
    lead = f"`{cls.PROG}`: {cls.DESCRIPTION} Read from `beam_jobs.config.{cls.__name__}` when this site was built."
    return "\n".join([lead, table(["flag", "default", "range or choices", "meaning"], rows)])


def search_actions() -> list[argparse.Action]:
    from beam_jobs.search import arg_parser

    return [a for a in arg_parser()._actions if a.option_strings and a.dest != "help"]


def search_flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len).lstrip("-")


def render_search_flags() -> str:
    from beam_jobs.search import arg_parser

    parser = arg_parser()
    one_of = {a.dest for group in parser._mutually_exclusive_groups for a in group._group_actions}
    rows = []
    for action in search_actions():
        if action.required:
            default = "<strong>required</strong>"
        elif action.dest in one_of:
            default = "<strong>one of the query flags</strong>"
        elif isinstance(action, argparse._StoreTrueAction):
            default = "off"
        else:
            default = shown(action.default)
        choices = ", ".join(code(getattr(c, "value", c)) for c in action.choices) if action.choices else ""
        rows.append(
            (f"flag-search-{search_flag(action)}", [code(", ".join(action.option_strings)), default, choices,
                                                    esc(action.help)])
        )  # fmt: skip
    lead = f"`{parser.prog}`: {parser.description} Read from `beam_jobs.search.arg_parser()` when this site was built."
    return "\n".join([lead, table(["flag", "default", "choices", "meaning"], rows)])


def job_flag_names() -> dict[str, list[str]]:
    """Every job's flag names (``tests/test_docs.py`` checks each has its row in the built site)."""
    names = {
        job: [flag_name(f) for f in config_flags(config_class(job))]
        for job in ("extract", "reduce", "index", "compare")
    }
    names["search"] = [search_flag(a) for a in search_actions()]
    return names


# --------------------------------------------------------------------------- contract: files and records


def source_comments(module) -> dict[str, str]:
    """``NAME = ...  # comment`` and ``("column", "type"),  # comment`` lines of a module, or of every module of a
    package: name -> comment."""
    modules = [module]
    if hasattr(module, "__path__"):
        found = pkgutil.iter_modules(module.__path__, module.__name__ + ".")
        modules += [importlib.import_module(m.name) for m in found]
    notes = {}
    for line in "\n".join(inspect.getsource(m) for m in modules).splitlines():
        match = re.match(r'^\s*(?:([A-Z_]+)\s*[:=]|\("([a-z_0-9]+)",).*?#\s*(.+)$', line)
        if match:
            notes[match.group(1) or match.group(2)] = match.group(3)
    return notes


def render_outputs() -> str:
    from beam_jobs import contract as c

    notes = source_comments(c)
    root, ds = f"{EXAMPLE_DATA}/out", EXAMPLE_DS

    def files(*names: str) -> str:
        constants = {getattr(c, n): n for n in dir(c) if n.isupper() and isinstance(getattr(c, n), str)}
        shown_files = []
        for name in names:
            note = notes.get(constants.get(name, ""), "")
            shown_files.append(code(name) + (f" <small>{esc(note)}</small>" if note else ""))
        return "<br>".join(shown_files)

    model = c.MODELS[1]
    rows = [
        (None, [code(c.embeddings_dir(root, ds)), "<code>beam_jobs.extract_embeddings</code>",
                files(c.EMBEDDING_FILES, c.FAILURE_FILES, c.MANIFEST, c.NPY_DIR + "/")]),
        (None, [code(c.projections_dir(root, c.METHODS[0], ds)) + "<br>"
                + code(c.projections_dir(root, c.METHODS[1], ds, model=model))
                + " <small>(a model after the first)</small>",
                "<code>beam_jobs.reduce_dim</code>",
                files(c.PROJECTION_FILES, c.MAP_PNG, c.MAP_HTML, c.MAP_MOSAIC, c.MANIFEST)]),
        (None, [code(c.references_dir(root, c.METHODS[1], "fixed")) + "<br>"
                + code(c.references_dir(root, c.METHODS[1], c.partition(ds))) + " <small>(rolling)</small>",
                "<code>beam_jobs.reduce_dim</code> (<code>--reference</code>)", files(c.REFERENCE_FILE)]),
        (None, [code(c.index_dir(root, ds)), "<code>beam_jobs.build_index</code>",
                files(c.INDEX_FILE, c.INDEX_ROWS, c.DUPLICATES_FILE, c.MANIFEST)]),
        (None, [code(c.comparisons_dir(root, ds)), "<code>beam_jobs.compare</code>",
                files(c.COMPARISON_JSON, c.COMPARISON_PNG)]),
        (None, [code(c.run_record_path(root, ds).rsplit("/", 1)[0] + "/"), "the DAG's <code>publish</code>",
                files(c.RUN_RECORD)]),
    ]  # fmt: skip
    out = [
        f"For `output_root={root}` and the night {ds}; read from `beam_jobs.contract` when this site was built.",
        table(["folder", "written by", "files"], rows),
    ]
    for title, columns in (
        (f"`{c.EMBEDDING_FILES}` columns", c.EMBEDDING_COLUMNS),
        (f"`{c.PROJECTION_FILES}` columns", c.PROJECTION_COLUMNS),
        (f"`{c.DUPLICATES_FILE}` columns", c.DUPLICATE_COLUMNS),
    ):
        column_rows = [(None, [code(name), code(kind), esc(notes.get(name, ""))]) for name, kind in columns]
        out += [f"### {title}", table(["column", "Arrow type", "note"], column_rows)]
    return "\n".join(out)


def field_notes(doc: str) -> dict[str, str]:
    """The ``Args:`` block of a TypedDict's docstring: field name -> its text (``a, b: text`` names two)."""
    notes: dict[str, str] = {}
    lines = doc.split("Args:", 1)[1].splitlines() if "Args:" in doc else []
    current: list[str] = []
    for line in lines:
        match = re.match(r"^\s{4,8}([a-z_0-9]+(?:, [a-z_0-9]+)*): (.*)$", line)
        if match:
            current = match.group(1).split(", ")
            for name in current:
                notes[name] = match.group(2)
        elif line.strip() and current:
            for name in current:
                notes[name] += " " + line.strip()
    # "inputs: ...; duplicate_inputs: ..." on one line: split at "; name:".
    for name, text in list(notes.items()):
        for part in re.split(r";\s+(?=[a-z_]+: )", text)[1:]:
            other, _, rest = part.partition(": ")
            notes.setdefault(other, rest)
        notes[name] = re.split(r";\s+(?=[a-z_]+: )", text)[0]
    return notes


def render_records() -> str:
    from beam_jobs import contract as c

    out = []
    for cls in (c.ExtractManifest, c.ReduceManifest, c.IndexManifest, c.ComparisonReport, c.FailureRecord, c.RunRecord):
        doc = inspect.cleandoc(cls.__doc__ or "")
        summary = doc.split("\n\n", 1)[0].replace("\n", " ")
        notes = field_notes(doc)
        rows = []
        for name, kind in cls.__annotations__.items():
            # TypedDict keeps a module's postponed annotations as ForwardRef('str', ...): show the text.
            kind = getattr(kind, "__forward_arg__", None) or str(kind)
            optional = kind.startswith("NotRequired[")
            kind = kind.removeprefix("NotRequired[").removesuffix("]") if optional else kind
            rows.append((None, [code(name), code(kind) + (" <small>(optional)</small>" if optional else ""),
                                esc(notes.get(name, ""))]))  # fmt: skip
        out += [f"### `{cls.__name__}`", summary, table(["field", "type", "note"], rows)]
    return "\n".join(out)


# --------------------------------------------------------------------------- machine types

# Steady-state rates of the extraction job (ResNet50, batch 32, OpenVINO as `auto` picks it), images/s on a
# 2-vCPU host, with where each comes from. "measured": the whole job on this project's own hosts (make bench,
# marginal rate (4N-N)/(T4N-TN)). "estimate": derived as the row says. Decode + resize costs 3.6 ms of CPU per
# image of the benchmark's photos (2026-12-07), so a job reaches at most model / (model + decode) of an
# engine's model-only rate on the same cores.
DECODE_CPU_MS = 3.6
MACHINE_ROWS: list[dict[str, Any]] = [
    {
        "cpu": "AMX (Intel Sapphire Rapids and later)",
        "families": "C3, C4",
        "engine": "OpenVINO bf16",
        "model_only": 150.4,
        "job": None,
        "source": "model-only 150.4 img/s measured 2026-11-23 on an Intel Xeon with AMX (two async requests); "
        "the job's rate is an estimate: model-only x the decode ceiling",
    },
    {
        "cpu": "AVX-512 VNNI, no bf16 (Intel Cascade Lake, Ice Lake)",
        "families": "N2, C2",
        "engine": "OpenVINO f32",
        "model_only": 29.1,
        "job": None,
        "source": "estimate: OpenVINO f32 model-only 29.1 img/s measured 2026-12-07 on this project's AVX-512 "
        "host (an AMD Zen 4 with the engine held at f32, not an Intel N2), x the decode ceiling",
    },
    {
        "cpu": "AVX2 only (AMD Rome/Milan, older Intel)",
        "families": "N2D, E2, N1",
        "engine": "OpenVINO f32",
        "model_only": 10.4,
        "job": 9.7,
        "source": "measured 2026-12-01 on a 2-core AMD EPYC, AVX2 only (make bench; a slow day for that host: "
        "2026-11-22 gave 25.9 img/s model-only on the same class)",
    },
    {
        "cpu": "AMD Zen 4 (AVX-512 with AVX512_BF16)",
        "families": "C3D",
        "engine": "OpenVINO bf16",
        "model_only": 59.0,
        "job": 52.9,
        "source": "measured 2026-12-07 on a 2-core AMD EPYC Zen 4 (make bench --repeat 3, median)",
    },
]
HOST_VCPUS = 2
GB_PER_VCPU = 4.0  # the -standard shapes of N2, N2D, C3, C3D, C4
DISK_GB_PER_VCPU = 25 / 4  # Dataflow's batch boot disk with Dataflow Shuffle (25 GB) on a 4-vCPU worker


def job_rate(row: dict[str, Any]) -> tuple[float, bool]:
    """(images/s on the 2-vCPU host, measured?)."""
    if row["job"] is not None:
        return row["job"], True
    model_ms = HOST_VCPUS * 1000 / row["model_only"]  # CPU ms per image on the host's cores
    return row["model_only"] * model_ms / (model_ms + DECODE_CPU_MS), False


def machine_costs() -> list[dict[str, Any]]:
    from beam_jobs.nightly.cost import DEFAULT_PRICES as p

    per_vcpu_hour = p["vcpu_hour"] + GB_PER_VCPU * p["memory_gb_hour"] + DISK_GB_PER_VCPU * p["pd_gb_hour"]
    flexrs_hour = p["flexrs_vcpu_hour"] + GB_PER_VCPU * p["flexrs_memory_gb_hour"] + DISK_GB_PER_VCPU * p["pd_gb_hour"]
    out = []
    for row in MACHINE_ROWS:
        rate, measured = job_rate(row)
        vcpu_hours = 1e6 / (rate / HOST_VCPUS) / 3600
        out.append(
            {**row, "rate": rate, "measured": measured, "vcpu_hours": vcpu_hours,
             "usd": vcpu_hours * per_vcpu_hour, "usd_flexrs": vcpu_hours * flexrs_hour}
        )  # fmt: skip
    return out


def render_machine_costs() -> str:
    from beam_jobs.nightly.cost import DEFAULT_PRICES as p
    from beam_jobs.nightly.cost import PRICES_AS_OF, PRICES_SOURCE

    rows, notes = [], []
    for i, r in enumerate(machine_costs(), start=1):
        kind = "<strong>measured</strong>" if r["measured"] else "<em>estimate</em>"
        cells = [esc(r["cpu"]), esc(r["families"]), esc(r["engine"]), f"{r['rate']:.1f} {kind} ({i})",
                 f"{r['vcpu_hours']:.1f}", f"{r['usd']:.2f}", f"{r['usd_flexrs']:.2f}"]  # fmt: skip
        rows.append((None, cells))
        notes.append(f"{i}. {r['cpu']}: {r['source']}.")
    head = ["CPU kind", "Dataflow families", "engine (auto)", "job img/s on 2 vCPUs", "vCPU-hours per 1M images",
            "USD per 1M images", "with FlexRS"]  # fmt: skip
    return "\n".join(
        [
            table(head, rows),
            "Where each rate comes from:",
            "",
            *notes,
            "",
            f"Prices: `beam_jobs.nightly.cost.DEFAULT_PRICES` as of {PRICES_AS_OF} ({PRICES_SOURCE}): "
            f"vCPU-hour {p['vcpu_hour']}, memory GB-hour {p['memory_gb_hour']}, FlexRS vCPU-hour "
            f"{p['flexrs_vcpu_hour']}, FlexRS memory GB-hour {p['flexrs_memory_gb_hour']}, PD GB-hour "
            f"{p['pd_gb_hour']}. Each vCPU-hour also pays {GB_PER_VCPU:g} GB of memory (the -standard shapes) and "
            f"{DISK_GB_PER_VCPU:g} GB of boot disk (25 GB on a 4-vCPU worker). Rates per vCPU are the 2-vCPU "
            f"host's halved; estimates take the engine's model-only rate times the decode ceiling "
            f"(decode + resize: {DECODE_CPU_MS} ms of CPU per image). Computed when this site was built.",
        ]
    )


# --------------------------------------------------------------------------- the hook


def render(kind: str, arg: str | None) -> str:
    if kind == "params" and arg is None:
        return render_params()
    if kind == "flags" and arg in ("extract", "reduce", "index", "compare", "report", "store"):
        return render_config_flags(arg)
    if kind == "flags" and arg == "search":
        return render_search_flags()
    if kind == "outputs" and arg is None:
        return render_outputs()
    if kind == "records" and arg is None:
        return render_records()
    if kind == "machine-costs" and arg is None:
        return render_machine_costs()
    raise KeyError(kind if arg is None else f"{kind} {arg}")


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(match: re.Match) -> str:
        try:
            return render(match.group(1), match.group(2))
        except KeyError as exc:
            raise PluginError(f"{page.file.src_path}: no generated block {exc}") from None

    return GENERATED.sub(replace, markdown)
