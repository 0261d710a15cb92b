"""The records that cross the boundary, as ``TypedDict``s: a failure record, the job manifests
(``manifest.json``) and the run record (``run.json`` and the maps Asset event)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class FailureRecord(TypedDict):
    """One line of ``failures-*.jsonl``: an input that did not become an embedding.

    Args:
        image_uri: the input as listed.
        stage: where it failed: ``read``, ``decode`` or ``inference``.
        error: a short stable reason (``not_found``, ``not_an_image``, ...), also a metric name suffix.
        message: the detail, for a person.
        run_id: the run that tried.
    """

    image_uri: str
    stage: str
    error: str
    message: str
    run_id: str


class OutputFiles(TypedDict, total=False):
    embeddings: list[str]
    failures: list[str]
    projections: list[str]
    map_png: str
    map_html: str
    map_mosaic: str


class ModelFigures(TypedDict):
    """One model's entry in an extraction manifest's ``models`` (keyed by its ``--model`` name).

    Args:
        model_id: what its rows carry; dim: its vectors' length; input_size: [width, height].
        weights: the ``--weights`` value it ran with.
        embedded, failed: ``embedded + failed == inputs`` for each model; a read or decode failure
            counts against every model, an inference failure against its own.
        failures_by_reason: ``"<stage>/<error>" -> count``, for this model.
        images_per_second: its rows over the pass's wall time (the models share the pass).
        engines: the engines that ran it (``engines`` entries whose ``model`` is this one).
    """

    model_id: str
    dim: int
    input_size: list[int]
    weights: str
    embedded: int
    failed: int
    failures_by_reason: dict[str, int]
    images_per_second: float
    engines: list[dict[str, Any]]


class ExtractManifest(TypedDict):
    """``manifest.json`` of an embeddings partition; ``inputs == embedded + failed`` always holds.

    Args:
        inputs: distinct input URIs; duplicate_inputs: listed more than once (counted once).
        failures_by_reason: ``"<stage>/<error>" -> count``.
        model_id: names architecture, pooling, input size and the exact weights.
        engine, precision: what was asked (``auto`` or a forced value).
        engines: what ran, one entry per distinct worker set-up: engine, precision, the accuracy
            guard's min cosine, the CPU features that decided, and the fallbacks taken.
        reused, computed: of the embedded rows, those whose vector was reused (``--skip_known``: the same bytes
            embedded with the same model_id in an earlier partition, listed in known_partitions, or under
            another URI this night) and those the model computed (embedded = reused + computed).
            NotRequired: older manifests lack them.
        metrics: the pipeline's Beam counters, added by the launcher once the job is done
            (absent with ``--detach``: then the Airflow sensor reads them from Dataflow).
        models: each model of the pass (``--model a,b``), by name. The top-level model, model_id,
            weights, embedding_dim, embedded, failed, failures_by_reason and images_per_second are
            the primary (first) model's, so single-model readers keep working. Absent in manifests
            written before several models were possible.
    """

    job: str
    run_id: str
    input: str
    output: str
    inputs: int
    duplicate_inputs: int
    embedded: int
    reused: NotRequired[int]
    computed: NotRequired[int]
    failed: int
    failures_by_reason: dict[str, int]
    skip_known: NotRequired[bool]
    known_partitions: NotRequired[list[str]]
    model: str
    model_id: str
    weights: str
    embedding_dim: int
    batch_size: int
    resize_mode: str
    output_format: str
    engine: str
    precision: str
    engines: list[dict[str, Any]]
    npy_files: int
    files: OutputFiles
    started_at: str
    finished_at: str
    seconds: float
    images_per_second: float
    models: NotRequired[dict[str, ModelFigures]]
    metrics: NotRequired[dict[str, Any]]


class ReduceManifest(TypedDict):
    """``manifest.json`` of a projections partition.

    Args:
        rows: rows projected (all rows of ``model_id`` in the inputs, less those dropped); rows_in_input: of any
            model.
        rows_dropped_non_finite: rows of ``model_id`` left out of fit and projection because their embedding
            holds a NaN or an infinity (rows + rows_dropped_non_finite = that model's input rows);
            non_finite_examples: up to 5 of their URIs (the smallest, sorted). Written by every run since
            they were added (0 and [] when none); NotRequired because older manifests lack them.
        parameters: the method's settings as run.
        explained_variance_ratio / explained_variance: PCA only.
        fit_rows: rows the reducer was fitted on (all for PCA, the seeded sample for UMAP).
        trustworthiness: neighbourhood preservation on a seeded sample (None when skipped).
        html_points: points in map.html; thumbnails: of them with an inline thumbnail;
            thumbnail_misses: reads that gave none, by reason (``unreadable``, ``timeout``, ``time_budget``);
            mosaic_images: images in map_mosaic.png (0 when none was drawn).
        reference: with --reference / --save_reference, the saved reducer the coordinates are in (dir, mode
            "loaded" or "fitted", version, method, model_id, partitions fitted on, seed, fit rows, run id).
        drift: with a reference, tonight against it (``reduce_dim.drift.drift_stats``): mean_shift(_relative),
            mmd2 and mmd_p_value, novelty_rate and its threshold, the rows compared.
    """

    job: str
    method: str
    run_id: str
    inputs: list[str]
    input_files: int
    partitions: list[str]
    output: str
    rows: int
    rows_in_input: int
    rows_dropped_non_finite: NotRequired[int]
    non_finite_examples: NotRequired[list[str]]
    model_id: str
    embedding_dim: int
    parameters: dict[str, Any]
    fit_rows: int
    explained_variance_ratio: NotRequired[list[float]]
    explained_variance: NotRequired[list[float]]
    n_neighbors: NotRequired[int]
    pca_dims: NotRequired[int]
    pca_explained_variance_ratio_total: NotRequired[float]
    trustworthiness: float | None
    trustworthiness_rows: int
    html_points: int
    thumbnails: int
    thumbnail_misses: NotRequired[dict[str, int]]
    mosaic_images: NotRequired[int]
    reference: NotRequired[dict[str, Any]]
    drift: NotRequired[dict[str, Any]]
    files: OutputFiles
    started_at: str
    finished_at: str
    seconds: float
    rows_per_second: float
    metrics: NotRequired[dict[str, Any]]


class IndexManifest(TypedDict):
    """``manifest.json`` of an index partition (``beam_jobs.build_index``).

    Args:
        library: e.g. "faiss-cpu 1.15.1"; parameters: kind (flat | ivf), dim, nlist, nprobe, train_rows, storage.
        rows: rows in the index (the whole window); partitions: the nights it holds;
            partitions_read: the nights this run read (only the new ones when it extended an earlier index).
        mode: "rebuilt" or "extended" (then extended_from names the earlier index partition).
        recall_at_10: the index's top 10 against exact search for ``recall_sample`` rows of the nights read,
            excluding the query row itself (None when skipped).
        exact_duplicate_rows: rows of the nights read whose content_sha256 another row of the window shares;
            near_duplicate_pairs: pairs at cosine >= duplicate_threshold (exact duplicates not repeated).
    """

    job: str
    run_id: str
    output: str
    library: str
    parameters: dict[str, Any]
    model_id: str
    embedding_dim: int
    rows: int
    window_days: int
    partitions: list[str]
    partitions_read: list[str]
    mode: str
    extended_from: str | None
    rows_read: int
    rows_dropped: dict[str, int]
    build_seconds: float
    recall_at_10: float | None
    recall_sample: int
    duplicate_threshold: float
    exact_duplicate_rows: int
    exact_duplicate_groups: int
    near_duplicate_pairs: int
    files: dict[str, str]
    started_at: str
    finished_at: str
    seconds: float
    metrics: NotRequired[dict[str, Any]]


class KnnOverlap(TypedDict):
    """Per-image share of the k nearest neighbours two models agree on: mean, quantiles, and
    ``histogram[i]`` = images sharing exactly i of their k neighbours."""

    mean: float
    p10: float
    p50: float
    p90: float
    histogram: list[int]


class PairComparison(TypedDict):
    """Two models on the same images (``beam_jobs.compare``); every figure is 1.0 for a rotated copy.

    Args:
        models: the two model names (``--model`` values) and model_ids: theirs.
        images: common images the figures were computed on (the seeded sample); k: neighbours per image.
        knn_overlap: neighbours both agree on (cosine, the image itself excluded, within the sample).
        distance_spearman: Spearman correlation of the two models' cosine distances over seeded pairs.
        linear_cka: linear centred kernel alignment of the two feature matrices.
    """

    models: list[str]
    model_ids: list[str]
    images: int
    k: int
    knn_overlap: KnnOverlap
    distance_spearman: float
    linear_cka: float


class ComparisonReport(TypedDict):
    """``comparison.json``: every pair of the partition's models.

    Args:
        common_images: images every compared model embedded (by image_uri); sample_size, pairs, seed: as run.
        images_by_model: model_id -> rows it has in the input.
    """

    job: str
    run_id: str
    inputs: list[str]
    output: str
    model_ids: list[str]
    images_by_model: dict[str, int]
    common_images: int
    sample_size: int
    pairs: int
    seed: int
    comparisons: list[PairComparison]
    files: dict[str, str]
    started_at: str
    finished_at: str
    seconds: float


class IndexEntry(TypedDict):
    """The run record's index figures (``beam_jobs.nightly.record.index_entry``); ``partitions``: the nights the
    index holds (in a backfill, the nights a sequential run's index would hold)."""

    dir: str
    rows: int
    mode: str
    recall_at_10: float | None
    build_seconds: float
    exact_duplicate_rows: int
    near_duplicate_pairs: int
    partitions: list[str]


class ExtractionSummary(TypedDict):
    """What the DAG's ``validate_extraction`` task keeps of an extraction manifest."""

    inputs: int
    embedded: int
    failed: int
    failure_rate: float
    failures_by_reason: dict[str, int]
    images_per_second: float | None
    seconds: float | None
    model_id: str | None
    engines: list[dict[str, Any]]
    embeddings_dir: str
    models: dict[str, ModelSummary]


class ModelSummary(TypedDict):
    """One model of the night, as ``validate_extraction`` keeps it (every model's failure rate is checked)."""

    model_id: str
    embedded: int
    failed: int
    failure_rate: float
    images_per_second: float | None


class ModelEntry(TypedDict):
    """The run record's figures of one model, with its maps (``projections``: method -> entry)."""

    model_id: str
    embedded: int
    failed: int
    images_per_second: float | None
    projections: dict[str, ProjectionEntry]


class ComparisonEntry(TypedDict):
    """The run record's model comparison: where it is, and per pair the three figures."""

    dir: str
    comparison_json: str
    comparison_png: str
    pairs: list[dict[str, Any]]


class EmbeddingsEntry(TypedDict):
    """The run record's extraction figures; ``engines`` as ``"openvino f32"`` (see the manifest for detail)."""

    dir: str
    inputs: int
    embedded: int
    failed: int
    images_per_second: float | None
    seconds: float | None
    engines: list[str]


class ProjectionEntry(TypedDict):
    dir: str
    rows: int
    seconds: float
    map_png: str
    map_html: str
    map_mosaic: NotRequired[str]
    reference: NotRequired[dict[str, Any]]
    drift: NotRequired[dict[str, Any]]
    explained_variance_ratio: NotRequired[list[float]]
    trustworthiness: NotRequired[float]


class InputReady(TypedDict):
    """What let the run start (``wait_for_input``'s result, the run record's ``input_ready``).

    Args:
        rule: ``settled``, ``marker`` or ``any``; files, bytes: what matched when it fired.
        newest_change: epoch seconds of the latest change seen (a file, or a folder's entries);
        marker: the marker's path (rule ``marker``); reason: the sensor's words for why it fired.
    """

    rule: str
    files: int
    bytes: int
    newest_change: float | None
    marker: str | None
    reason: str


class RunRecord(TypedDict):
    """``runs/ds=YYYY-MM-DD/run.json``, also the ``extra`` of the maps Asset event.

    Args:
        model_id, embeddings, projections: the primary (first) model's, as a single-model night's.
        projections: one entry per method run, with the paths of its maps.
        models: every model of the night by name, with its figures and maps (the maps page groups by it).
        comparison: the models compared pairwise (nights with two or more models).
        dataflow_jobs: Beam task id -> Dataflow job id, state and metrics (Dataflow runs only).
        input_ready: which rule let the run start, and the files it saw.
        cost: per job the resources used (Dataflow's billing metrics, or a local job's CPU seconds and
            peak memory) and a USD estimate; totals and per 1,000 embedded images (beam_jobs.cost.cost_summary).
    """

    ds: str
    run_id: str
    runner: str
    input: str
    model_id: str | None
    embeddings: EmbeddingsEntry
    projections: dict[str, ProjectionEntry]
    models: NotRequired[dict[str, ModelEntry]]
    comparison: NotRequired[ComparisonEntry]
    dataflow_jobs: NotRequired[dict[str, dict[str, Any]]]
    index: NotRequired[IndexEntry]
    input_ready: NotRequired[InputReady]
    cost: NotRequired[dict[str, Any]]
