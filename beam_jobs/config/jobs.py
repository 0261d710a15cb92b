"""The jobs' flags: ``ExtractConfig``, ``ReduceConfig``, ``IndexConfig`` and ``CompareConfig``, each flag one
``option()`` field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from beam_jobs.config.base import (
    BaseConfig,
    ConfigError,
    JobConfig,
    at_least,
    between,
    option,
)
from beam_jobs.contract import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ENGINE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_READ_TIMEOUT_S,
    ENGINE_TF,
    ENGINES,
    HUB_PREFIX,
    INPUT_RANGES,
    MAX_BATCH_SIZE,
    METHODS,
    MODEL_CHOICES_TEXT,
    MODELS,
    OUTPUT_FORMATS,
    PRECISION_AUTO,
    PRECISION_BF16,
    PRECISIONS,
    SAVEDMODEL_PREFIX,
    WEIGHTS_IMAGENET,
    ResizeMode,
)

# --------------------------------------------------------------------------- extract_embeddings


def split_models(model: str) -> tuple[str, ...]:
    """``--model a,b`` -> ("a", "b"): the models one pass runs, the first being the primary one."""
    return tuple(name.strip() for name in model.split(","))


def _one_model_check(model: str) -> str | None:
    if model in MODELS:
        return None
    for prefix in (SAVEDMODEL_PREFIX, HUB_PREFIX):
        if model.startswith(prefix):
            return None if model[len(prefix) :].strip() else f"needs a path or handle after {prefix!r}"
    return f"must be one of {', '.join(MODELS)}, savedmodel:PATH or hub:HANDLE, got {model!r}"


def _model_check(model: str) -> str | None:
    names = split_models(model)
    if len(set(names)) != len(names):
        return f"names a model twice: {model!r}"
    problems = [problem for name in names if (problem := _one_model_check(name))]
    return "; ".join(problems) or None


def weights_for(models: tuple[str, ...], weights: str) -> dict[str, str]:
    """``--weights`` per model: ``model=value`` pairs (comma-separated), a plain value for the rest.

    A plain value applies to every registry model; with several models a SavedModel (whose weights
    are inside it) keeps the flag's default. An item counts as a pair only when the text before its
    first '=' names one of ``models`` exactly, so a path such as ``/w/ds=2026-11-20/w.h5`` stays a
    path. Raises ConfigError for a pair naming no model of the run, or a model given twice.
    """
    pairs: dict[str, str] = {}
    plain: list[str] = []
    for item in (part.strip() for part in weights.split(",")):
        name, sep, value = item.partition("=")
        if sep and name.strip() in models:
            if name.strip() in pairs:
                raise ConfigError(f"--weights gives {name.strip()!r} twice")
            pairs[name.strip()] = value.strip()
        elif sep and "/" not in name and not name.startswith((SAVEDMODEL_PREFIX, HUB_PREFIX)) and "." not in name:
            raise ConfigError(f"--weights {item!r}: {name!r} is not one of this run's models ({', '.join(models)})")
        elif item:
            plain.append(item)
    if len(plain) > 1:
        raise ConfigError(f"--weights {weights!r}: give one plain value (for every model) and model=value pairs")
    default = plain[0] if plain else WEIGHTS_IMAGENET
    out = {}
    for name in models:
        if name in pairs:
            out[name] = pairs[name]
        elif len(models) > 1 and name.startswith((SAVEDMODEL_PREFIX, HUB_PREFIX)):
            out[name] = WEIGHTS_IMAGENET
        else:
            out[name] = default
    return out


@dataclass(frozen=True, kw_only=True)
class ExtractConfig(JobConfig):
    PROG: ClassVar[str] = "python -m beam_jobs.extract_embeddings"
    DESCRIPTION: ClassVar[str] = "Embed images with a pretrained Keras model through Beam RunInference."

    input: str | None = option(
        None,
        "glob of image files, local or gs:// (e.g. 'gs://b/images/ds=2026-11-20/*.jpg')",
        group="input (exactly one)",
    )
    input_manifest: str | None = option(
        None,
        "text file with one URI per line, or a CSV whose header has an 'image_uri' or 'uri' column",
        group="input (exactly one)",
    )
    model: str = option(
        DEFAULT_MODEL,
        f"embedding model: {MODEL_CHOICES_TEXT}; or savedmodel:PATH (an image feature-vector SavedModel, local "
        "or gs://; input size and dtype from its serving signature) or hub:HANDLE. Several, comma-separated "
        "(--model resnet50,mobilenet_v3_large), run in one pass: each image is decoded once, every model "
        "writes its rows (their model_id tells them apart) into the one partition",
        check=_model_check,
    )
    input_range: str | None = option(
        None,
        "savedmodel:/hub: models: the pixel values the model expects (default: 0-255 for an integer input, "
        "0-1 for a float one); write --input_range=-1-1 with '=' (argparse)",
        choices=(None, *INPUT_RANGES),
        kind=str,
    )
    weights: str = option(
        WEIGHTS_IMAGENET,
        "'imagenet' (needs internet or the Keras cache), 'random' (seeded; for tests), "
        "or a path (local or gs://) to a .weights.h5/.h5/.keras file; with several models, model=value "
        "pairs, comma-separated (a plain value applies to the models no pair names)",
        check=lambda v: None if v else "must be 'imagenet', 'random' or a path to a weights file",
    )
    seed: int = option(0, "seed for --weights random")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "max images per model call", check=between(1, MAX_BATCH_SIZE))
    resize_mode: ResizeMode = option(ResizeMode.CENTER_CROP, "how images become squares", choices=tuple(ResizeMode))
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse larger images", check=at_least(1))
    max_bytes: int = option(
        DEFAULT_MAX_BYTES,
        "refuse larger files before reading them (default 512 MiB: an uncompressed 16-bit RGB TIFF of "
        "--max_pixels still fits)",
        check=at_least(1),
    )
    read_timeout_s: float = option(
        DEFAULT_READ_TIMEOUT_S, "object stores: an input not read within this many seconds fails", check=at_least(1)
    )
    output_format: str = option(
        "parquet", "'npy' also writes one .npy per image (Parquet is always written)", choices=OUTPUT_FORMATS
    )
    engine: str = option(
        DEFAULT_ENGINE,
        "inference engine for the same model: 'auto' picks, on each worker, the fastest that passes the "
        "accuracy guard there (OpenVINO, else TensorFlow); 'tf' or 'openvino' forces one",
        choices=ENGINES,
    )
    precision: str = option(
        PRECISION_AUTO,
        "'auto': bf16 where the worker's CPU computes it natively (AVX512_BF16, AMX), else f32; "
        "'f32' or 'bf16' forces one (bf16 needs --engine openvino or auto)",
        choices=PRECISIONS,
    )
    engine_threads: int = option(0, "inference threads per worker process; 0 = all its cores", check=at_least(0))
    skip_known: bool = option(
        False,
        "reuse the vector of an image whose bytes (content_sha256) were already embedded with the same model_id, "
        "in an earlier ds= partition beside --output or under another URI tonight, instead of computing it again",
    )

    @property
    def models(self) -> tuple[str, ...]:
        """The models of the pass, primary first."""
        return split_models(self.model)

    def weights_of(self) -> dict[str, str]:
        """``--weights`` for each model of the pass."""
        return weights_for(self.models, self.weights)

    def cross_field_problems(self) -> list[str]:
        problems = []
        if bool(self.input) == bool(self.input_manifest):
            problems.append("give exactly one of --input (a glob) or --input_manifest (a file of URIs)")
        if self.input_range and not any(m.startswith((SAVEDMODEL_PREFIX, HUB_PREFIX)) for m in self.models):
            problems.append(f"--input_range applies to savedmodel:/hub: models; {self.model} sets its own")
        if not _model_check(self.model):
            try:
                weights_for(self.models, self.weights)
            except ConfigError as exc:
                problems.append(str(exc))
        if self.engine == ENGINE_TF and self.precision == PRECISION_BF16:
            problems.append("--precision bf16 needs --engine openvino or auto (--engine tf runs f32)")
        return problems


# --------------------------------------------------------------------------- reduce_dim


def _inputs_check(inputs: tuple[str, ...]) -> str | None:
    if inputs and all(i.strip() for i in inputs):
        return None
    return "is required (a glob or a partition directory of extraction output)"


@dataclass(frozen=True, kw_only=True)
class ReduceConfig(JobConfig):
    PROG: ClassVar[str] = "python -m beam_jobs.reduce_dim"
    DESCRIPTION: ClassVar[str] = (
        "Reduce extraction output (embeddings Parquet) to 2D with exact PCA or sample-fit UMAP."
    )

    inputs: tuple[str, ...] = option(
        help="extraction output: a partition directory, a glob of them (e.g. '/out/embeddings/ds=2026-11-*') "
        "or a glob of embeddings-*.parquet files; repeat to combine several",
        flag="input",
        kind=tuple,
        check=_inputs_check,
    )
    method: str = option(help="reduction method", choices=METHODS)
    seed: int = option(0, "seeds sampling and UMAP")
    model_id: str | None = option(None, "use only rows of this model_id (needed when the input mixes models)")
    block_rows: int = option(8192, "rows per in-memory block (speed vs memory)", check=at_least(1))
    pca_dims: int = option(
        50,
        "UMAP: PCA to this many dims first; 0 = off",
        check=lambda v: None if v == 0 or v >= 2 else f"must be 0 (off) or >= 2, got {v}",
    )
    fit_sample_size: int = option(20_000, "UMAP: rows in the seeded fit sample", check=at_least(3))
    n_neighbors: int = option(15, "UMAP n_neighbors", check=at_least(2))
    min_dist: float = option(0.1, "UMAP min_dist", check=between(0.0, 1.0))
    html_points: int = option(
        200_000,
        "points plotted in the map.html explorer (every row up to this many, else a seeded sample)",
        check=between(0, 1_000_000, " (the HTML embeds them)"),
    )
    thumbnail_size: int = option(96, "thumbnail pixels in map.html", check=between(16, 512))
    thumbnails: bool = option(
        True, "read the sampled images to embed thumbnails in map.html (--no-thumbnails: URIs only)"
    )
    thumbnail_budget_mb: float = option(
        8.0,
        "MB of inline thumbnails in map.html (seeded points get one until the budget is spent)",
        check=between(0, 200, " (the HTML embeds them)"),
    )
    thumbnail_timeout_s: float = option(10.0, "seconds one thumbnail read may take", check=at_least(0.1))
    thumbnail_time_budget_s: float = option(
        120.0, "seconds all thumbnail reads may take together; what misses it has none", check=at_least(0)
    )
    mosaic_grid: int = option(24, "map_mosaic.png: grid cells per side; 0 = no mosaic", check=between(0, 64))
    mosaic_cell: int = option(48, "map_mosaic.png: pixels per grid cell", check=between(16, 256))
    trust_sample_size: int = option(1000, "rows used to compute trustworthiness; 0 = skip", check=at_least(0))
    reference: str | None = option(
        None,
        "a saved reference reducer (folder): only transform with it, so nights share one 2D frame, and measure "
        "drift against it; refused when its model_id, embedding length or method differ",
        group="reference frame",
    )
    fit_reference: bool = option(
        False,
        "with --reference: when the folder holds no reducer yet, fit one (on the input and --fit_window_days) "
        "and save it there",
        group="reference frame",
    )
    save_reference: str | None = option(
        None, "fit as usual and save the reducer, with its provenance, to this folder", group="reference frame"
    )
    fit_window_days: int = option(
        1,
        "when fitting a reference: the input's night and the earlier ds= partitions beside it within this many "
        "days (the projection is still of the input only)",
        check=between(1, 366),
        group="reference frame",
    )

    def cross_field_problems(self) -> list[str]:
        problems = []
        if self.reference and self.save_reference:
            problems.append("give --reference (use a saved reducer) or --save_reference (save a new one), not both")
        if self.fit_reference and not self.reference:
            problems.append("--fit_reference needs --reference (the folder to fit into when it holds none)")
        return problems


# --------------------------------------------------------------------------- build_index


@dataclass(frozen=True, kw_only=True)
class IndexConfig(JobConfig):
    PROG: ClassVar[str] = "python -m beam_jobs.build_index"
    DESCRIPTION: ClassVar[str] = (
        "Build the night's nearest-neighbour index (faiss) over a window of embeddings partitions, "
        "with the near-duplicate and exact-duplicate report."
    )

    inputs: tuple[str, ...] = option(
        help="the night's embeddings partition (…/embeddings/ds=YYYY-MM-DD); repeat to add more",
        flag="input",
        kind=tuple,
        check=_inputs_check,
    )
    window_days: int = option(
        1,
        "index this many nights ending with the input's ds: the earlier ds= partitions beside it that exist",
        check=between(1, 366),
    )
    extend: bool = option(
        True,
        "reuse the newest earlier index partition beside --output when it fits (same model and kind, "
        "centroids trained on nights mostly still in the window): drop the nights that left the window, "
        "add only the new ones (--no-extend: rebuild)",
    )
    model_id: str | None = option(None, "use only rows of this model_id (needed when the input mixes models)")
    exact_below: int = option(
        20_000, "windows with fewer rows get an exact (flat) index instead of IVF", check=at_least(0)
    )
    nlist: int = option(0, "IVF lists; 0 = about 4 sqrt(rows)", check=at_least(0))
    nprobe: int = option(0, "IVF lists scanned per query; 0 = nlist/64, at least 8", check=at_least(0))
    duplicate_threshold: float = option(
        0.95,
        "cosine similarity at or above which two images count as near-duplicates (the night's rows against "
        "the window); 0 = no near-duplicate report",
        check=between(0.0, 1.0),
    )
    recall_sample: int = option(
        200, "rows of the night searched exactly to measure the index's recall@10; 0 = skip", check=at_least(0)
    )
    seed: int = option(0, "seeds the training sample, k-means and the recall sample")
    block_rows: int = option(8192, "rows per staged block (speed vs memory)", check=at_least(1))


# --------------------------------------------------------------------------- compare


@dataclass(frozen=True, kw_only=True)
class CompareConfig(BaseConfig):
    PROG: ClassVar[str] = "python -m beam_jobs.compare"
    DESCRIPTION: ClassVar[str] = (
        "Compare the models of one embeddings partition on the images they share: kNN overlap@k, Spearman "
        "correlation of pairwise distances, linear CKA; writes comparison.json and comparison.png."
    )

    inputs: tuple[str, ...] = option(
        help="an embeddings partition holding two or more models (…/embeddings/ds=YYYY-MM-DD); repeat to add more",
        flag="input",
        kind=tuple,
        check=_inputs_check,
    )
    model_ids: tuple[str, ...] = option(
        (),
        "compare only these model_ids (repeat the flag); default: every model in the input",
        flag="model_id",
        kind=tuple,
    )
    k: int = option(10, "neighbours per image for the kNN overlap", check=between(1, 100))
    sample_size: int = option(
        5000, "images (seeded sample of those all models embedded) the figures are computed on", check=at_least(3)
    )
    pairs: int = option(
        200_000, "seeded image pairs whose distances the Spearman correlation ranks", check=at_least(10)
    )
    seed: int = option(0, "seeds the image sample and the pairs")
