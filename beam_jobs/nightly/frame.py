"""The 2D frame across nights (which saved reference a night's maps use) and the drift alert thresholds.

Standard library only.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from beam_jobs.contract import POLICY_FIXED, POLICY_REFIT, POLICY_ROLLING, join, partition, references_dir

# Defaults of the reference and drift trigger params (beam_jobs.nightly.params reads them).
REFERENCE_DEFAULTS: dict[str, Any] = {
    "reference_policy": POLICY_REFIT,
    "reference": None,
    "reference_window_days": 7,
    "reference_every_days": 7,
}
# An alert fires when tonight's MMD p-value is below drift_p_value, or its novelty rate or relative mean
# shift is above its threshold (0 switches that one off). The run itself never fails for drift.
DRIFT_DEFAULTS: dict[str, float] = {"drift_p_value": 0.01, "novelty_rate_alert": 0.1, "mean_shift_alert": 0.5}
EPOCH = date(1970, 1, 1)


def rolling_anchor(ds: str, every_days: int) -> str:
    """The night a rolling reference in use on ``ds`` was fitted for: the latest date <= ds whose day
    number (since 1970-01-01) is a multiple of ``every_days``. Backfills of a date find the same one."""
    day = date.fromisoformat(ds)
    offset = (day - EPOCH).days % max(int(every_days), 1)
    return date.fromordinal(day.toordinal() - offset).isoformat()


def reference_settings(params: dict[str, Any], output_root: str, ds: str, methods: list[str]) -> dict[str, Any]:
    """The plan's frame keys: per method the reference folder the reduce job uses (empty with ``refit``).

    ``fixed``: the ``reference`` param's folder (per method below it), else
    ``<output_root>/references/method=<m>/fixed``; fitted the first night it is missing, on that night and
    the ``reference_window_days`` before it, then reused every night, backfills included.
    ``rolling``: ``<output_root>/references/method=<m>/ds=<anchor>``, the anchor being the night the
    reference was fitted for (every ``reference_every_days`` nights); fitted on the anchor's night and the
    ``reference_window_days`` before it when missing.
    """
    policy = str(params.get("reference_policy") or REFERENCE_DEFAULTS["reference_policy"])
    window = int(params.get("reference_window_days") or REFERENCE_DEFAULTS["reference_window_days"])
    every = int(params.get("reference_every_days") or REFERENCE_DEFAULTS["reference_every_days"])
    chosen = str(params.get("reference") or "").rstrip("/")
    folders: dict[str, str] = {}
    for method in methods:
        if policy == POLICY_FIXED:
            folders[method] = (
                join(chosen, f"method={method}") if chosen else references_dir(output_root, method, "fixed")
            )
        elif policy == POLICY_ROLLING:
            folders[method] = references_dir(output_root, method, partition(rolling_anchor(ds, every)))
        else:
            folders[method] = ""
    thresholds = {name: float(params.get(name, default)) for name, default in DRIFT_DEFAULTS.items()}
    return {
        "reference_policy": policy,
        "references": folders,
        "fit_reference": policy != POLICY_REFIT,
        "reference_window_days": window,
        "reference_every_days": every,
        **thresholds,
    }


def drift_alerts(drift: dict[str, Any] | None, thresholds: dict[str, Any]) -> list[str]:
    """What in tonight's drift figures crosses a threshold (empty: nothing to alert on)."""
    if not drift:
        return []
    out = []
    alpha = float(thresholds.get("drift_p_value", DRIFT_DEFAULTS["drift_p_value"]))
    if alpha > 0 and drift.get("mmd_p_value") is not None and drift["mmd_p_value"] < alpha:
        out.append(
            f"MMD p-value {drift['mmd_p_value']:.4g} < {alpha:g}: tonight's embeddings differ from the reference"
        )
    novelty = float(thresholds.get("novelty_rate_alert", DRIFT_DEFAULTS["novelty_rate_alert"]))
    if novelty > 0 and (drift.get("novelty_rate") or 0) > novelty:
        out.append(f"novelty rate {drift['novelty_rate']:.1%} > {novelty:.1%}: images unlike any in the reference")
    shift = float(thresholds.get("mean_shift_alert", DRIFT_DEFAULTS["mean_shift_alert"]))
    if shift > 0 and (drift.get("mean_shift_relative") or 0) > shift:
        out.append(f"mean embedding moved {drift['mean_shift_relative']:.3g} x the reference's spread (> {shift:g})")
    return out
