"""Cost per night: Dataflow's billing metrics, list prices, the record's ``cost`` and the jump alert.

Standard library only, like the rest of ``beam_jobs.nightly``: both orchestrators (the Airflow DAG and the Kubeflow
publish step) and the Dataflow hook code import it.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from beam_jobs.contract import (
    run_record_path,
)


def earlier_records(output_root: str, ds: str, nights: int, read_json: Any) -> list[dict]:
    """The published run records of the ``nights`` dates before ``ds`` that exist (for the cost median)."""
    day = date.fromisoformat(ds)
    records = []
    for back in range(1, nights + 1):
        try:
            records.append(read_json(run_record_path(output_root, (day - timedelta(days=back)).isoformat())))
        except Exception:  # noqa: BLE001 - a night never published (or unreadable) is simply not in the median
            continue
    return records


# Dataflow's service metrics (origin "dataflow/v1b3" in projects.locations.jobs.getMetrics) that bill a
# batch job, and their units as Dataflow reports them: the record names each field by its unit.
SERVICE_METRICS = {
    "TotalVcpuTime": "vcpu_seconds",
    "TotalMemoryUsage": "memory_mb_seconds",
    "TotalPdUsage": "pd_gb_seconds",
    "TotalSsdUsage": "ssd_gb_seconds",
    "TotalShuffleDataProcessed": "shuffle_bytes",
    "BillableShuffleDataProcessed": "billable_shuffle_bytes",
    "TotalStreamingDataProcessed": "streaming_bytes",
    "TotalGpuTime": "gpu_seconds",
}
# List prices in USD for Dataflow batch in us-central1, copied from https://cloud.google.com/dataflow/pricing
# (Dataflow compute resources; FlexRS rows for FlexRS jobs; GPU: NVIDIA T4 per hour). Written on the date below
# on a machine without internet access, so not re-read from the page that day: check them against it before
# trusting the USD figures. Regions and contracts differ: a deployment overrides any of them with the Airflow
# Variable 'image_embeddings_prices' (JSON).
PRICES_AS_OF = "2026-12-01"
PRICES_SOURCE = "https://cloud.google.com/dataflow/pricing (batch, us-central1, list prices)"
DEFAULT_PRICES: dict[str, float] = {
    "vcpu_hour": 0.056,
    "memory_gb_hour": 0.003557,
    "flexrs_vcpu_hour": 0.0336,
    "flexrs_memory_gb_hour": 0.0021342,
    "pd_gb_hour": 0.000054,
    "ssd_gb_hour": 0.000298,
    "shuffle_gb": 0.011,
    "streaming_gb": 0.018,
    "gpu_hour": 0.35,
}
COST_HISTORY_NIGHTS = 14  # nights looked back for the median cost per 1,000 images


def service_metrics(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """The billing metrics of a Dataflow job from its ``MetricUpdate`` list, by unit-named field.

    Each comes committed and tentative (``context.tentative``); the committed value wins, the
    tentative one stands in while a job has none yet.
    """
    committed: dict[str, float] = {}
    tentative: dict[str, float] = {}
    for update in metrics:
        name = update.get("name") or {}
        field = SERVICE_METRICS.get(name.get("name", ""))
        if name.get("origin") != "dataflow/v1b3" or field is None:
            continue
        try:
            value = float(update.get("scalar"))
        except (TypeError, ValueError):
            continue
        is_tentative = str((name.get("context") or {}).get("tentative", "")).lower() == "true"
        (tentative if is_tentative else committed)[field] = value
    return {**tentative, **committed}


def prices(overrides: dict[str, Any] | None = None) -> tuple[dict[str, float], list[str]]:
    """The price table with a deployment's overrides, and the problems with those (unknown names, not numbers)."""
    table, problems = dict(DEFAULT_PRICES), []
    for name, value in (overrides or {}).items():
        if name not in DEFAULT_PRICES:
            problems.append(f"price {name!r} is not one of {', '.join(DEFAULT_PRICES)}")
        elif not is_number(value) or value < 0:
            problems.append(f"price {name} {value!r} must be a number >= 0")
        else:
            table[name] = float(value)
    return table, problems


def job_cost(resources: dict[str, float], table: dict[str, float], flexrs: bool = False) -> float:
    """USD for one Dataflow job's resources at ``table`` (FlexRS rates for vCPU and memory when ``flexrs``)."""
    vcpu = table["flexrs_vcpu_hour" if flexrs else "vcpu_hour"]
    memory = table["flexrs_memory_gb_hour" if flexrs else "memory_gb_hour"]
    shuffle = resources.get("billable_shuffle_bytes", resources.get("shuffle_bytes", 0.0))
    usd = (
        resources.get("vcpu_seconds", 0.0) / 3600 * vcpu
        + resources.get("memory_mb_seconds", 0.0) / 1024 / 3600 * memory
        + resources.get("pd_gb_seconds", 0.0) / 3600 * table["pd_gb_hour"]
        + resources.get("ssd_gb_seconds", 0.0) / 3600 * table["ssd_gb_hour"]
        + shuffle / 1e9 * table["shuffle_gb"]
        + resources.get("streaming_bytes", 0.0) / 1e9 * table["streaming_gb"]
        + resources.get("gpu_seconds", 0.0) / 3600 * table["gpu_hour"]
    )
    return round(usd, 6)


def cost_summary(
    jobs: dict[str, dict[str, Any] | None],
    embedded: int,
    table: dict[str, float] | None = None,
    flexrs: bool = False,
    overridden: bool = False,
) -> dict[str, Any]:
    """The run record's ``cost``: per job its resources (Dataflow's metrics, or a local job's CPU seconds and
    peak memory) and USD estimate; totals; and per 1,000 embedded images."""
    table = table or dict(DEFAULT_PRICES)
    per_job: dict[str, Any] = {}
    usd_total: float | None = None
    cpu_total = 0.0
    for task, job in (jobs or {}).items():
        resources = dict((job or {}).get("resources") or {})
        if not resources:
            continue
        entry: dict[str, Any] = {"runner": (job or {}).get("runner"), **resources}
        if (job or {}).get("job_id"):
            entry["job_id"] = job["job_id"]
            entry["usd"] = job_cost(resources, table, flexrs)
            usd_total = (usd_total or 0.0) + entry["usd"]
        cpu_total += float(resources.get("vcpu_seconds", resources.get("cpu_seconds", 0.0)))
        per_job[task] = entry
    thousands = embedded / 1000 if embedded else 0
    return {
        "currency": "USD",
        "prices": {"as_of": PRICES_AS_OF, "source": PRICES_SOURCE, "overridden": overridden, "flexrs": flexrs},
        "jobs": per_job,
        "usd": round(usd_total, 6) if usd_total is not None else None,
        "cpu_seconds": round(cpu_total, 3),
        "embedded": embedded,
        "usd_per_1000_images": round(usd_total / thousands, 6) if usd_total is not None and thousands else None,
        "cpu_seconds_per_1000_images": round(cpu_total / thousands, 3) if thousands else None,
    }


def cost_figure(cost: dict[str, Any] | None) -> tuple[str, float] | None:
    """The figure nights are compared on: USD per 1,000 images on Dataflow, else CPU seconds per 1,000."""
    for name in ("usd_per_1000_images", "cpu_seconds_per_1000_images"):
        value = (cost or {}).get(name)
        if is_number(value) and value > 0:
            return name, float(value)
    return None


def cost_jump(cost: dict[str, Any], earlier: list[dict[str, Any] | None], ratio: float) -> str | None:
    """An alert line when this night's cost per 1,000 images is over ``ratio`` x the median of the earlier
    nights' (same figure; 0 turns it off; needs three earlier nights), else None."""
    import statistics

    now = cost_figure(cost)
    if not ratio or now is None:
        return None
    name, value = now
    history = [figure[1] for figure in map(cost_figure, earlier) if figure and figure[0] == name]
    if len(history) < 3:
        return None
    median = statistics.median(history)
    if value <= ratio * median:
        return None
    return (
        f"{name.replace('_', ' ')} is {value:g}, {value / median:.1f}x the median {median:g} "
        f"of the {len(history)} nights before (alert above {ratio:g}x)"
    )


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (JSON and params give both)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
