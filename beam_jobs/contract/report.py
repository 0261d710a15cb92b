"""The morning report (``beam_jobs.report``): what changed tonight, in pictures; this module is its only part of
the contract. ``<output_root>/reports/ds=YYYY-MM-DD/`` holds the three files below, replaced whole on every run."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from beam_jobs.contract.layout import join, partition

JOB_REPORT = "report"
REPORT_HTML = "report.html"  # one offline page: inline images (data: URIs) and styles only, no script, no network
REPORT_PNG = "report.png"  # one-image summary (numbers and the most novel thumbnails) for chat alerts
REPORT_JSON = "report.json"  # ReportJson: the same facts as data
# The report's sections, in page order (ReportJson.sections is keyed by these).
REPORT_SECTIONS = ("numbers", "new_tonight", "drift", "clusters", "duplicates", "models", "links")


def reports_dir(output_root: str, ds: str) -> str:
    return join(output_root, "reports", partition(ds))


class ReportNovelImage(TypedDict):
    """One of ``new_tonight``: a row of the night and its cosine distance (1 - cosine similarity) to the nearest
    row of the window's seeded sample; ``nearest_uri``/``nearest_ds``: that row."""

    image_uri: str
    score: float
    nearest_uri: NotRequired[str]
    nearest_ds: NotRequired[str]


class ReportCluster(TypedDict):
    """One cluster of the window (k-means, ``ReportJson.clustering``): its share of tonight's rows and of the
    window's sample, ``change`` = share_tonight - share_window, and up to 6 of its most typical images of tonight."""

    cluster: int
    share_tonight: float
    share_window: float
    change: float
    rows_tonight: int
    examples: list[str]


class ReportFailureReason(TypedDict):
    """Failures of one ``<stage>/<error>`` and up to 3 of their URIs."""

    reason: str
    count: int
    examples: list[str]


class ReportDuplicateGroup(TypedDict):
    """Images of the night that are one image: ``exact`` (same bytes) or ``near`` (cosine >= the index's
    threshold, joined through shared members); ``score``: the lowest pair score joining the group."""

    kind: str
    size: int
    image_uris: list[str]
    score: float


class ReportFigure(TypedDict):
    """A figure of ``numbers``: tonight's value beside the median of the earlier nights that have it
    (``nights`` of them, up to the history's length), with those values for the trend (oldest first)."""

    name: str
    label: str
    value: float | None
    median: float | None
    nights: int
    history: list[list[Any]]  # [ds, value] pairs


class ReportJson(TypedDict):
    """``report.json``.

    Args:
        sections: each of REPORT_SECTIONS -> None when it has content, else the one line saying why it is empty.
        window_nights: the earlier nights of ``model_id`` within ``window_days`` before ``ds`` that were read.
        numbers, failures: tonight in numbers and failures by reason (manifest, failures files, run records).
        new_tonight: the most novel rows first; novelty: how (method, dims, sample sizes), the rate, its threshold,
            its usual level and band (each earlier night against the others), and the measured error of the
            reduced search against exact search on the same sample (``check``).
        clusters: the biggest movers first; clustering: k, the space, the sample it was fitted on.
        duplicates: ``exact`` and ``near`` groups, largest first; drift: the night's projection figures against
            its saved reference; models: the comparison's headline figures per pair; links: name -> path.
        thumbnails: how many were shown, misses by reason, seconds; html_bytes: the page's size.
    """

    job: str
    run_id: str
    ds: str
    model_id: str | None
    window_days: int
    window_nights: list[str]
    output: str
    sections: dict[str, str | None]
    numbers: list[ReportFigure]
    failures: list[ReportFailureReason]
    new_tonight: list[ReportNovelImage]
    novelty: dict[str, Any]
    clusters: list[ReportCluster]
    clustering: dict[str, Any]
    duplicates: dict[str, list[ReportDuplicateGroup]]
    drift: dict[str, Any]
    models: list[dict[str, Any]]
    links: dict[str, str]
    thumbnails: dict[str, Any]
    html_bytes: int
    files: dict[str, str]
    started_at: str
    finished_at: str
    seconds: float
