"""The nightly run's decisions as plain functions: plan, validate the extraction, build the record.

Kept free of Airflow objects so tests call them directly; the DAG's tasks are
thin wrappers that pass in params, the run's date and the manifests read.
"""

from __future__ import annotations

import os
from typing import Any

from image_embeddings_airflow.paths import is_gcs, join

DAG_ID = "image_embeddings"
# The Asset the publish task emits one event on per published run (the maps page reads them).
MAPS_ASSET = "image_embeddings_maps"
PUBLISH_TASK = "publish"
METHODS = ("pca", "umap")
RUNNERS = ("FnApiRunner", "DataflowRunner")
# Mirrors beam_jobs.models.REGISTRY (a test keeps them equal); not imported, to keep DAG parsing light.
MODELS = ("resnet50",)
MAX_BATCH_SIZE = 1024


class PlanError(ValueError):
    """Run parameters that cannot work; the run fails at once, before any job starts, without retries."""


def _problems_with_weights(weights: str, runner: str) -> list[str]:
    if weights in ("imagenet", "random"):
        return []
    if not weights:
        return ["weights must be 'imagenet', 'random' or a path to a weights file"]
    if runner == "DataflowRunner" and not is_gcs(weights):
        return [f"weights {weights!r}: Dataflow workers need a gs:// path to the weights file"]
    if not is_gcs(weights) and not os.path.isfile(weights):
        return [f"weights file {weights!r} does not exist"]
    return []


def build_plan(
    params: dict[str, Any], ds: str, run_id: str, rendered_input: str, dataflow: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Check the run's parameters together and resolve every path the run will use.

    ``rendered_input`` is ``params["input"]`` with the run's date filled in.
    ``dataflow`` holds project, region, temp_location, staging_location (from
    params or Airflow Variables); it is only required with DataflowRunner.
    """
    problems: list[str] = []
    methods = params.get("methods")
    if not isinstance(methods, list) or not methods:
        problems.append(f"methods must be a non-empty list drawn from {list(METHODS)}, got {methods!r}")
        methods = []
    else:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            problems.append(f"methods {unknown} unknown; choose from {list(METHODS)}")
        if len(set(methods)) != len(methods):
            problems.append(f"methods lists a method twice: {methods}")
    runner = params.get("runner")
    if runner not in RUNNERS:
        problems.append(f"runner must be one of {list(RUNNERS)}, got {runner!r}")
    model = params.get("model")
    if model not in MODELS:
        problems.append(f"model must be one of {list(MODELS)}, got {model!r}")
    batch_size = params.get("batch_size")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        problems.append(f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")
    rate = params.get("max_failure_rate")
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        problems.append(f"max_failure_rate must be a number from 0 to 1, got {rate!r}")
    output_root = str(params.get("output_root") or "").rstrip("/")
    if not output_root:
        problems.append("output_root is required")
    if not rendered_input.strip():
        problems.append("input is required (a glob of the night's images)")
    elif "{{" in rendered_input or "{%" in rendered_input:
        problems.append(f"input {rendered_input!r} still holds template syntax after rendering")
    weights = str(params.get("weights") or "")
    problems += _problems_with_weights(weights, str(runner))

    dataflow_options: dict[str, Any] | None = None
    if runner == "DataflowRunner":
        df = dataflow or {}
        for name in ("project", "region", "temp_location"):
            if not df.get(name):
                problems.append(
                    f"DataflowRunner needs {name}: set the '{name}' param or the Airflow Variable "
                    f"'image_embeddings_{name}'"
                )
        for name, value in (
            ("input", rendered_input),
            ("output_root", output_root),
            ("temp_location", df.get("temp_location")),
        ):
            if value and not is_gcs(str(value)):
                problems.append(
                    f"{name} {value!r} must be a gs:// path with DataflowRunner (workers cannot see local files)"
                )
        dataflow_options = {
            "temp_location": df.get("temp_location"),
            "staging_location": df.get("staging_location") or df.get("temp_location"),
            "setup_file": df.get("setup_file"),
            "project": df.get("project"),
            "region": df.get("region"),
        }
        dataflow_options = {k: v for k, v in dataflow_options.items() if v}
    if problems:
        raise PlanError("the run's parameters cannot work:\n  - " + "\n  - ".join(problems))

    if not is_gcs(output_root):
        output_root = os.path.abspath(output_root)
    input_glob = rendered_input if is_gcs(rendered_input) else os.path.abspath(rendered_input)
    if rendered_input.endswith("/"):
        # A folder or gs:// prefix means the files directly in it, for the sensor and the job alike.
        input_glob = input_glob.rstrip("/") + "/*"
    return {
        "ds": ds,
        "run_id": run_id,
        "input": input_glob,
        "output_root": output_root,
        "embeddings_dir": join(output_root, "embeddings", f"ds={ds}"),
        "projections": {m: join(output_root, "projections", f"method={m}", f"ds={ds}") for m in methods},
        "methods": list(methods),
        "runner": runner,
        "model": model,
        "weights": weights if weights in ("imagenet", "random") or is_gcs(weights) else os.path.abspath(weights),
        "batch_size": batch_size,
        "max_failure_rate": float(rate),
        "dataflow": dataflow_options,
        "input_varies_by_date": ds in rendered_input or ds.replace("-", "") in rendered_input,
    }


class ExtractionRejected(ValueError):
    """The extraction ran but its result must not be published."""


def check_extraction(manifest: dict[str, Any], max_failure_rate: float, where: str) -> dict[str, Any]:
    """The extraction manifest's figures, or ExtractionRejected saying what is wrong."""
    inputs, embedded, failed = manifest["inputs"], manifest["embedded"], manifest["failed"]
    rate = failed / inputs if inputs else 0.0
    summary = {
        "inputs": inputs,
        "embedded": embedded,
        "failed": failed,
        "failure_rate": round(rate, 4),
        "failures_by_reason": manifest.get("failures_by_reason", {}),
        "images_per_second": manifest.get("images_per_second"),
        "seconds": manifest.get("seconds"),
        "model_id": manifest.get("model_id"),
        "embeddings_dir": where,
    }
    if embedded == 0:
        raise ExtractionRejected(
            f"nothing was embedded: {inputs} input(s), {failed} failed {summary['failures_by_reason']}; "
            f"see {join(where, 'failures-*.jsonl')}"
        )
    if rate > max_failure_rate:
        raise ExtractionRejected(
            f"{failed} of {inputs} inputs failed ({rate:.1%}), over max_failure_rate {max_failure_rate:.1%}: "
            f"{summary['failures_by_reason']}; see {join(where, 'failures-*.jsonl')}"
        )
    return summary


def run_record(
    plan: dict[str, Any],
    extraction: dict[str, Any],
    projections: dict[str, dict[str, Any]],
    jobs: dict[str, dict[str, Any] | None] | None = None,
) -> dict:
    """What a published run says about itself: counts, throughput and where the maps are.

    ``jobs`` maps Beam task ids to their ``*_done`` results; the Dataflow ones
    (those with a job id) are recorded with their job metrics.
    """
    dataflow_jobs = {task: job for task, job in (jobs or {}).items() if job and job.get("job_id")}
    return {
        "ds": plan["ds"],
        "run_id": plan["run_id"],
        "runner": plan["runner"],
        "input": plan["input"],
        "model_id": extraction.get("model_id"),
        "embeddings": {
            "dir": plan["embeddings_dir"],
            **{k: extraction.get(k) for k in ("inputs", "embedded", "failed", "images_per_second", "seconds")},
        },
        "projections": {
            method: {
                "dir": plan["projections"][method],
                "rows": m.get("rows"),
                "seconds": m.get("seconds"),
                "map_png": join(plan["projections"][method], "map.png"),
                "map_html": join(plan["projections"][method], "map.html"),
                **(
                    {"explained_variance_ratio": m["explained_variance_ratio"]}
                    if "explained_variance_ratio" in m
                    else {}
                ),
                **({"trustworthiness": m["trustworthiness"]} if m.get("trustworthiness") is not None else {}),
            }
            for method, m in projections.items()
        },
        **({"dataflow_jobs": dataflow_jobs} if dataflow_jobs else {}),
    }
