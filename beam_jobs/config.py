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
        if self.output and (self.output.rstrip("/") in ("", "gs:") or self.output.rstrip("/").endswith("gs:/")):
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
    return parser


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
    )
    return cfg.validate(), beam_args
