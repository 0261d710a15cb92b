"""Run the compiled pipeline on Kubeflow Pipelines or Vertex AI: one date, a backfill, or the nightly schedule.

    python -m pipelines.submit --host https://kfp.example.com -p input='gs://b/images/ds={{ ds }}/*' \\
        -p output_root=gs://b/out --from-date 2026-11-01 --to-date 2026-11-30      # one run per date
    python -m pipelines.submit --vertex acme-ml/europe-west4 --pipeline-root gs://b/kfp-root \\
        -p ... --schedule "0 3 * * *"                                              # the nightly run

One run per date, each with ``ds`` set, so a backfill is the nightly run repeated: every run
replaces its own date's partitions whole, and a date run twice leaves one copy. A schedule leaves
``ds`` empty: each run embeds the day before its scheduled time (UTC), the day that has ended.
``-p name=value`` values are read as JSON when they parse (``-p methods='["pca"]'``,
``-p batch_size=64``), else as text.

A backfill submits its dates oldest first and waits for each run to end before it submits the next:
a night's index extends the earlier nights' and a fitted reference is shared by the nights after it,
and KFP has no dependency between runs (Airflow's ``wait_for_downstream``) to order only those steps.
``--parallel`` submits every date at once; it is refused unless nothing is shared across nights
(``reference_policy=refit`` and ``index=false``).
"""

from __future__ import annotations

import argparse
import json
from datetime import date, timedelta
from typing import Any

from beam_jobs.contract import POLICY_REFIT
from beam_jobs.nightly import params as table
from pipelines.image_embeddings_kfp import OUTPUT, PIPELINE_NAME

MAX_DATES = 366  # a longer range is more likely a typo than a plan; run it in pieces


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"-p {pair!r}: expected name=value")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


def dates(first: str, last: str) -> list[str]:
    """Every date from ``first`` to ``last``, both included."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    if end < start:
        raise ValueError(f"--to-date {last} is before --from-date {first}")
    count = (end - start).days + 1
    if count > MAX_DATES:
        raise ValueError(f"{count} dates: more than {MAX_DATES}; backfill in smaller ranges")
    return [(start + timedelta(days=n)).isoformat() for n in range(count)]


def kfp_cron(cron: str) -> str:
    """KFP's recurring runs take a seconds field first; a five-field cron gets ``0`` seconds."""
    fields = cron.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return cron
    raise ValueError(f"cron {cron!r}: expected 5 fields (minute hour day month weekday)")


def shares_state(params: dict[str, Any]) -> bool:
    """Whether nights read what earlier nights wrote: a saved 2D frame or the index (both on by default)."""
    defaults = table.defaults(table.Deployment())
    policy = params.get("reference_policy", defaults["reference_policy"])
    return policy != POLICY_REFIT or bool(params.get("index", defaults["index"]))


class RunFailed(RuntimeError):
    """A backfill's night did not succeed: the later nights are not submitted."""


def submit_dates(
    client: Any,
    package: str,
    params: dict[str, Any],
    days: list[str],
    experiment: str,
    parallel: bool = False,
    timeout_s: int = 24 * 3600,
) -> list[Any]:
    """One KFP run per date (``client`` is a ``kfp.Client``), oldest first; caching off, as the pipeline's
    steps are. Unless ``parallel``, each run must succeed before the next date is submitted."""
    if parallel and shares_state(params):
        raise ValueError(
            "--parallel: these nights share state (a saved 2D frame or the similarity index), which must be built "
            "oldest night first; set reference_policy=refit and index=false, or backfill without --parallel"
        )
    runs = []
    for ds in sorted(days):
        run = client.create_run_from_pipeline_package(
            package,
            arguments={**params, "ds": ds},
            run_name=f"{PIPELINE_NAME}-{ds}",
            experiment_name=experiment,
            enable_caching=False,
        )
        runs.append(run)
        if not parallel:
            done = client.wait_for_run_completion(run.run_id, timeout_s)
            state = str(getattr(done, "state", "") or "")
            if state.upper() not in ("SUCCEEDED", "SUCCESS"):
                raise RunFailed(f"ds={ds}: run {run.run_id} ended {state or 'unknown'}; later dates not submitted")
    return runs


def schedule(client: Any, package: str, params: dict[str, Any], cron: str, experiment: str) -> Any:
    """The nightly recurring run: one at a time, no catch-up of missed nights (backfill those)."""
    experiment_id = client.create_experiment(experiment).experiment_id
    return client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=f"{PIPELINE_NAME}-nightly",
        cron_expression=kfp_cron(cron),
        max_concurrency=1,
        no_catchup=True,
        params={**params, "ds": ""},
        pipeline_package_path=package,
        enable_caching=False,
    )


def vertex_jobs(aiplatform: Any, package: str, params: dict[str, Any], days: list[str], root: str) -> list[Any]:
    """The same on Vertex AI Pipelines (``aiplatform`` is ``google.cloud.aiplatform``, initialised)."""
    return [
        aiplatform.PipelineJob(
            display_name=f"{PIPELINE_NAME}-{ds}" if ds else f"{PIPELINE_NAME}-nightly",
            template_path=package,
            pipeline_root=root,
            parameter_values={**params, "ds": ds},
            enable_caching=False,
        )
        for ds in days
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Kubeflow Pipelines API endpoint (what kfp.Client(host=...) takes)")
    where.add_argument("--vertex", metavar="PROJECT/REGION", help="Vertex AI Pipelines in this project and region")
    parser.add_argument("--pipeline-root", help="gs:// folder for the runs' artifacts (required on Vertex AI)")
    parser.add_argument("--package", default=OUTPUT, help=f"the compiled pipeline (make kfp; default {OUTPUT})")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--experiment", default=PIPELINE_NAME)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ds", help="one run for this date")
    what.add_argument("--from-date", help="a backfill: one run per date up to --to-date")
    what.add_argument("--schedule", metavar="CRON", help="create the nightly recurring run, e.g. '0 3 * * *' (UTC)")
    parser.add_argument("--to-date")
    parser.add_argument(
        "--parallel", action="store_true", help="a backfill: submit every date at once (only if nights share no state)"
    )
    parser.add_argument("--service-account")
    args = parser.parse_args(argv)
    try:
        params = parse_params(args.param)
        if args.from_date:
            if not args.to_date:
                parser.error("--from-date needs --to-date")
            days = dates(args.from_date, args.to_date)
        else:
            days = [date.fromisoformat(args.ds).isoformat()] if args.ds else [""]
        if args.schedule:
            kfp_cron(args.schedule)
    except ValueError as exc:
        parser.error(str(exc))

    if args.host:
        import kfp

        client = kfp.Client(host=args.host)
        if args.schedule:
            print(schedule(client, args.package, params, args.schedule, args.experiment))
        else:
            for run in submit_dates(client, args.package, params, days, args.experiment, args.parallel):
                print(run.run_id)
        return 0

    if not args.pipeline_root:
        parser.error("--vertex needs --pipeline-root gs://...")
    from google.cloud import aiplatform

    project, _, region = args.vertex.partition("/")
    aiplatform.init(project=project, location=region)
    if args.parallel and shares_state(params):
        parser.error("--parallel: these nights share state (a saved 2D frame or the index); see --help")
    for job in vertex_jobs(aiplatform, args.package, params, sorted(days), args.pipeline_root):
        if args.schedule:
            cron = f"TZ=UTC {args.schedule}"
            print(job.create_schedule(cron=cron, display_name=job.display_name, max_concurrent_run_count=1))
        else:
            job.submit(service_account=args.service_account)
            print(job.resource_name)
            if not args.parallel:
                job.wait()  # oldest night first, as on Kubeflow; raises when the run fails
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
