"""Typed job configuration, parsed and validated before any work starts.

Each job splits its argv with ``argparse.parse_known_args``: the flags
defined here are ours, everything else goes to Beam's ``PipelineOptions``.
Validation only needs the standard library and Beam's FileSystems, so it
also runs cheaply inside an Airflow task before a job is launched.
"""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass, field

from beam_jobs.images import DEFAULT_MAX_PIXELS, ResizeMode
from beam_jobs.models import REGISTRY

OUTPUT_FORMATS = ("parquet", "npy")
MAX_BATCH_SIZE = 1024


class ConfigError(ValueError):
    """A bad flag value; raised before the pipeline is built."""


def names_a_root(output: str) -> bool:
    """True for '/', 'gs://' and the like: a job replaces --output whole, so never a root."""
    stripped = output.rstrip("/")
    return stripped in ("", "gs:") or stripped.endswith("gs:/")


def default_run_id() -> str:
    return time.strftime("manual__%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class ExtractConfig:
    output: str
    input: str | None = None
    input_manifest: str | None = None
    model: str = "resnet50"
    weights: str = "imagenet"
    seed: int = 0
    batch_size: int = 32
    resize_mode: ResizeMode = ResizeMode.CENTER_CROP
    max_pixels: int = DEFAULT_MAX_PIXELS
    output_format: str = "parquet"
    run_id: str = field(default_factory=default_run_id)
    num_shards: int = 0
    intra_op_threads: int = 0
    detach: bool = False
    started_at: float = field(default_factory=time.time)

    def validate(self) -> ExtractConfig:
        problems = []
        if bool(self.input) == bool(self.input_manifest):
            problems.append("give exactly one of --input (a glob) or --input_manifest (a file of URIs)")
        if not self.output:
            problems.append("--output is required")
        if self.model not in REGISTRY:
            problems.append(f"--model {self.model!r} is unknown; known: {', '.join(sorted(REGISTRY))}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            problems.append(f"--batch_size must be between 1 and {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.max_pixels < 1:
            problems.append(f"--max_pixels must be positive, got {self.max_pixels}")
        if self.output_format not in OUTPUT_FORMATS:
            problems.append(f"--output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if self.num_shards < 0:
            problems.append(f"--num_shards must be >= 0 (0 = let the runner decide), got {self.num_shards}")
        if self.intra_op_threads < 0:
            problems.append(f"--intra_op_threads must be >= 0, got {self.intra_op_threads}")
        if not self.weights:
            problems.append("--weights must be 'imagenet', 'random' or a path to a weights file")
        if self.output and names_a_root(self.output):
            problems.append(f"--output {self.output!r} must name a directory below the root, it is replaced whole")
        if problems:
            raise ConfigError("invalid arguments:\n  - " + "\n  - ".join(problems))
        return self


def extract_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.extract_embeddings",
        description="Embed images with a pretrained Keras model through Beam RunInference.",
    )
    src = parser.add_argument_group("input (exactly one)")
    src.add_argument("--input", help="glob of image files, local or gs:// (e.g. 'gs://b/images/ds=2026-11-20/*.jpg')")
    src.add_argument(
        "--input_manifest",
        help="text file with one URI per line, or a CSV whose header has an 'image_uri' or 'uri' column",
    )
    parser.add_argument("--output", required=True, help="output directory; replaced whole on every run")
    parser.add_argument("--model", default="resnet50", choices=sorted(REGISTRY))
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (needs internet or the Keras cache), 'random' (seeded; for tests), "
        "or a path (local or gs://) to a .weights.h5/.h5/.keras file",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    parser.add_argument("--batch_size", type=int, default=32, help="max images per model call")
    parser.add_argument("--resize_mode", default=ResizeMode.CENTER_CROP.value, choices=[m.value for m in ResizeMode])
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    parser.add_argument(
        "--output_format",
        default="parquet",
        choices=OUTPUT_FORMATS,
        help="'npy' also writes one .npy per image (Parquet is always written)",
    )
    parser.add_argument("--run_id", default=None, help="recorded in every row (Airflow passes its run id)")
    parser.add_argument("--num_shards", type=int, default=0, help="output shards; 0 lets the runner decide")
    parser.add_argument(
        "--intra_op_threads", type=int, default=0, help="TensorFlow threads per worker process; 0 = all cores"
    )
    add_detach_flag(parser)
    return parser


def add_detach_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detach",
        action="store_true",
        help="remote runners: return once the job is submitted (Airflow's sensor waits; the job still "
        "writes its manifest, without the launcher's metrics)",
    )


def parse_extract_args(argv: list[str] | None) -> tuple[ExtractConfig, list[str]]:
    known, beam_args = extract_arg_parser().parse_known_args(argv)
    cfg = ExtractConfig(
        output=known.output,
        input=known.input,
        input_manifest=known.input_manifest,
        model=known.model,
        weights=known.weights,
        seed=known.seed,
        batch_size=known.batch_size,
        resize_mode=ResizeMode(known.resize_mode),
        max_pixels=known.max_pixels,
        output_format=known.output_format,
        run_id=known.run_id or default_run_id(),
        num_shards=known.num_shards,
        intra_op_threads=known.intra_op_threads,
        detach=known.detach,
    )
    return cfg.validate(), beam_args


# --------------------------------------------------------------------------- reduce_dim

REDUCE_METHODS = ("pca", "umap")


@dataclass(frozen=True)
class ReduceConfig:
    inputs: tuple[str, ...]
    output: str
    method: str
    seed: int = 0
    model_id: str | None = None
    block_rows: int = 8192
    pca_dims: int = 50
    fit_sample_size: int = 20_000
    n_neighbors: int = 15
    min_dist: float = 0.1
    html_points: int = 1000
    thumbnail_size: int = 96
    thumbnails: bool = True
    trust_sample_size: int = 1000
    run_id: str = field(default_factory=default_run_id)
    num_shards: int = 0
    detach: bool = False
    started_at: float = field(default_factory=time.time)

    def validate(self) -> ReduceConfig:
        problems = []
        if not self.inputs or not all(i.strip() for i in self.inputs):
            problems.append("--input is required (a glob or a partition directory of extraction output)")
        if not self.output:
            problems.append("--output is required")
        elif names_a_root(self.output):
            problems.append(f"--output {self.output!r} must name a directory below the root, it is replaced whole")
        if self.method not in REDUCE_METHODS:
            problems.append(f"--method must be one of {', '.join(REDUCE_METHODS)}, got {self.method!r}")
        if self.block_rows < 1:
            problems.append(f"--block_rows must be >= 1, got {self.block_rows}")
        if self.pca_dims != 0 and self.pca_dims < 2:
            problems.append(f"--pca_dims must be 0 (off) or >= 2, got {self.pca_dims}")
        if self.fit_sample_size < 3:
            problems.append(f"--fit_sample_size must be >= 3, got {self.fit_sample_size}")
        if self.n_neighbors < 2:
            problems.append(f"--n_neighbors must be >= 2, got {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= 1.0:
            problems.append(f"--min_dist must be between 0 and 1, got {self.min_dist}")
        if not 0 <= self.html_points <= 20_000:
            problems.append(f"--html_points must be between 0 and 20000 (the HTML embeds them), got {self.html_points}")
        if not 16 <= self.thumbnail_size <= 512:
            problems.append(f"--thumbnail_size must be between 16 and 512, got {self.thumbnail_size}")
        if self.trust_sample_size < 0:
            problems.append(f"--trust_sample_size must be >= 0, got {self.trust_sample_size}")
        if self.num_shards < 0:
            problems.append(f"--num_shards must be >= 0 (0 = let the runner decide), got {self.num_shards}")
        if problems:
            raise ConfigError("invalid arguments:\n  - " + "\n  - ".join(problems))
        return self


def reduce_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.reduce_dim",
        description="Reduce extraction output (embeddings Parquet) to 2D with exact PCA or sample-fit UMAP.",
    )
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        help="extraction output: a partition directory, a glob of them (e.g. '/out/embeddings/ds=2026-11-*') "
        "or a glob of embeddings-*.parquet files; repeat to combine several",
    )
    parser.add_argument("--output", required=True, help="output directory; replaced whole on every run")
    parser.add_argument("--method", required=True, choices=REDUCE_METHODS)
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling and UMAP")
    parser.add_argument(
        "--model_id", default=None, help="use only rows of this model_id (needed when the input mixes models)"
    )
    parser.add_argument("--block_rows", type=int, default=8192, help="rows per in-memory block (speed vs memory)")
    parser.add_argument("--pca_dims", type=int, default=50, help="UMAP: PCA to this many dims first; 0 = off")
    parser.add_argument("--fit_sample_size", type=int, default=20_000, help="UMAP: rows in the seeded fit sample")
    parser.add_argument("--n_neighbors", type=int, default=15, help="UMAP n_neighbors")
    parser.add_argument("--min_dist", type=float, default=0.1, help="UMAP min_dist")
    parser.add_argument("--html_points", type=int, default=1000, help="seeded sample plotted in map.html")
    parser.add_argument("--thumbnail_size", type=int, default=96, help="thumbnail pixels in map.html")
    parser.add_argument(
        "--thumbnails",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read the sampled images to embed thumbnails in map.html (--no-thumbnails: URIs only)",
    )
    parser.add_argument(
        "--trust_sample_size", type=int, default=1000, help="rows used to compute trustworthiness; 0 = skip"
    )
    parser.add_argument("--run_id", default=None, help="recorded in every row (Airflow passes its run id)")
    parser.add_argument("--num_shards", type=int, default=0, help="output shards; 0 lets the runner decide")
    add_detach_flag(parser)
    return parser


def parse_reduce_args(argv: list[str] | None) -> tuple[ReduceConfig, list[str]]:
    known, beam_args = reduce_arg_parser().parse_known_args(argv)
    cfg = ReduceConfig(
        inputs=tuple(known.input),
        output=known.output,
        method=known.method,
        seed=known.seed,
        model_id=known.model_id,
        block_rows=known.block_rows,
        pca_dims=known.pca_dims,
        fit_sample_size=known.fit_sample_size,
        n_neighbors=known.n_neighbors,
        min_dist=known.min_dist,
        html_points=known.html_points,
        thumbnail_size=known.thumbnail_size,
        thumbnails=known.thumbnails,
        trust_sample_size=known.trust_sample_size,
        run_id=known.run_id or default_run_id(),
        num_shards=known.num_shards,
        detach=known.detach,
    )
    return cfg.validate(), beam_args
