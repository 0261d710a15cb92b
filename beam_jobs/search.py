"""Find similar images in a night's index: ``python -m beam_jobs.search``.

    python -m beam_jobs.search --index /data/out/index/ds=2026-11-20 --image query.jpg -k 10 [--json]
    python -m beam_jobs.search --index DIR --uri /data/images/ds=2026-11-20/cat.jpg     # an indexed image
    python -m beam_jobs.search --index DIR --vector-from 4294967296                     # a row id (or position)

Prints the ``k`` nearest indexed images with their cosine similarity, night and URI.
A query image (``--image``, a local or gs:// file) is decoded and embedded exactly as
the extraction job does (same decode + resize, same model building); the model's
``model_id`` must equal the index's, otherwise the query is refused before the model
is loaded (exit status 2): vectors of two models are not comparable. The weights
default to what the index's model_id names (``random`` with its seed, ``imagenet``);
an index built from a weights file needs ``--weights PATH`` (checked by its SHA-256).

``open_index`` and ``Index.neighbours`` are what the Airflow search page uses too.

``--store lance --store_uri URI`` asks the vector store that ``python -m beam_jobs.publish_store`` fills instead of
a night's index (every published night, one table per model_id): ``beam_jobs.store_search``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_jobs import storage
from beam_jobs.config import UsageError
from beam_jobs.contract import DEFAULT_MODEL, INDEX_FILE, INDEX_ROWS, MANIFEST, ResizeMode

LOG = logging.getLogger(__name__)


class SearchError(UsageError):
    """A query that cannot be answered as asked (unknown row, model mismatch, no index)."""


@dataclass
class Index:
    """A loaded index partition: the faiss index, its rows and its manifest."""

    path: str
    manifest: dict[str, Any]
    index: Any
    ids: np.ndarray
    uris: np.ndarray
    ds: np.ndarray

    def __post_init__(self):
        self._position = {int(i): p for p, i in enumerate(self.ids)}
        self._by_uri = {str(u): p for p, u in enumerate(self.uris)}

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    def has_uri(self, uri: str) -> bool:
        return uri in self._by_uri

    def row_id(self, row: str | int) -> int:
        """A row given as its id, its position in rows.parquet, or its image URI."""
        text = str(row).strip()
        if text.lstrip("-").isdigit():
            value = int(text)
            if value in self._position:
                return value
            if 0 <= value < len(self.ids):
                return int(self.ids[value])
            raise SearchError(f"row {value} is neither an id nor a position (0..{len(self.ids) - 1}) of {self.path}")
        if text in self._by_uri:
            return int(self.ids[self._by_uri[text]])
        raise SearchError(f"{text!r} is not an indexed image of {self.path}; embed it with --image instead")

    def vector_of(self, row: str | int) -> tuple[int, np.ndarray]:
        from beam_jobs.build_index import ann

        row_id = self.row_id(row)
        return row_id, ann.reconstruct(self.index, row_id)

    def neighbours(self, vector: np.ndarray, k: int = 10, exclude: int | None = None) -> list[dict[str, Any]]:
        """The ``k`` nearest rows of a unit ``vector``: rank, score (cosine), id, ds, image_uri."""
        from beam_jobs.build_index import ann

        unit, keep = ann.normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        if not keep.all():
            raise SearchError("the query vector is all zeros: it has no direction to search along")
        extra = 1 if exclude is not None else 0
        scores, found = ann.search(self.index, unit, k + extra)
        out = []
        for score, row_id in zip(scores[0], found[0], strict=True):
            if row_id < 0 or row_id == exclude or len(out) == k:
                continue
            p = self._position[int(row_id)]
            out.append(
                {
                    "rank": len(out) + 1,
                    "score": round(float(score), 4),
                    "id": int(row_id),
                    "ds": str(self.ds[p]),
                    "image_uri": str(self.uris[p]),
                }
            )
        return out


def open_index(path: str, read: Callable[[str], bytes] | None = None) -> Index:
    """Load ``path`` (an index partition): refuses a folder that holds no complete index.

    ``read`` reads one whole file (default: Beam's FileSystems; the Airflow page passes its GCSHook reader).
    """
    import pyarrow.parquet as pq

    from beam_jobs.build_index import ann

    read = read or _read_file
    try:
        manifest = json.loads(read(storage.join(path, MANIFEST)))
    except Exception as exc:  # noqa: BLE001 - missing or unreadable: one clear line
        raise SearchError(f"{path} holds no index (no readable {MANIFEST}: {exc})") from None
    if manifest.get("job") != "build_index":
        raise SearchError(f"{path} is not an index partition (its manifest is from job {manifest.get('job')!r})")
    rows = pq.read_table(io.BytesIO(read(storage.join(path, INDEX_ROWS))), columns=["id", "image_uri", "ds"])
    index = ann.deserialize(read(storage.join(path, INDEX_FILE)))
    if index.ntotal != rows.num_rows:
        raise SearchError(f"{path}: the index holds {index.ntotal} rows but {INDEX_ROWS} lists {rows.num_rows}")
    return Index(
        path,
        manifest,
        index,
        rows.column("id").to_numpy(),
        rows.column("image_uri").to_numpy(zero_copy_only=False),
        rows.column("ds").to_numpy(zero_copy_only=False),
    )


def _read_file(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


# --------------------------------------------------------------------------- query images

_RANDOM = re.compile(r"weights=random-seed(-?\d+)$")


def weights_for(model_id: str, weights: str | None, seed: int | None) -> tuple[str, int]:
    """The weights to embed with: given, or what the index's model_id names (random + seed, imagenet)."""
    if weights:
        return weights, seed or 0
    if match := _RANDOM.search(model_id):
        return "random", int(match.group(1)) if seed is None else seed
    if model_id.endswith("weights=imagenet"):
        return "imagenet", 0
    raise SearchError(
        f"the index was built with model {model_id!r}: pass the same weights file with --weights PATH "
        "(its SHA-256 is checked against the model_id)"
    )


def query_model(model_id: str, model: str | None, weights: str | None, seed: int | None):
    """(spec, resolved weights) for the index's ``model_id``; SearchError before loading when they differ."""
    from beam_jobs.extract_embeddings import models

    name = model or (model_id.split("/", 1)[0] if "/" in model_id else DEFAULT_MODEL)
    if name == "savedmodel" and not model:
        raise SearchError(f"the index was built with {model_id!r}: pass --model savedmodel:PATH")
    try:
        spec = models.get_spec(name)
    except ValueError as exc:
        known = f"the index holds vectors of {model_id!r}, which this package cannot compute"
        raise SearchError(f"{known}: {exc}") from None
    chosen, chosen_seed = weights_for(model_id, weights, seed)
    resolved = models.resolve_weights(spec, chosen, chosen_seed)
    ours = models.model_id(spec, resolved)
    if ours != model_id:
        raise SearchError(
            f"model_id mismatch: the query would be embedded with {ours!r} but the index holds vectors of "
            f"{model_id!r}; their similarities mean nothing. Use the index's model and weights"
        )
    return spec, resolved


def embed_image(data: bytes, spec, resolved, resize_mode: ResizeMode = ResizeMode.CENTER_CROP) -> np.ndarray:
    """One image's vector, with the extraction job's decode + resize and model (TensorFlow, f32)."""
    from beam_jobs.extract_embeddings.engines import EngineChoice
    from beam_jobs.extract_embeddings.images import ImageError, decode_and_resize
    from beam_jobs.extract_embeddings.inference import load_embedding_model

    try:
        decoded = decode_and_resize(data, spec.input_size, resize_mode)
    except ImageError as exc:
        raise SearchError(f"the query image cannot be used: {exc.stage}/{exc.reason}: {exc.message}") from None
    model = load_embedding_model(spec, resolved, EngineChoice(engine="tf", precision="f32"))
    return np.asarray(model(decoded.pixels[None]))[0]


def read_image(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return handle.read()
    except Exception as exc:  # noqa: BLE001 - not found, permission, ...: one clear line
        raise SearchError(f"cannot read the query image {path!r}: {exc}") from None


# --------------------------------------------------------------------------- command line


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.search", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="an index partition (…/index/ds=YYYY-MM-DD), local or gs://")
    source.add_argument(
        "--store", choices=("lance", "bigquery"), help="or a vector store of published nights: lance (with --store_uri)"
    )
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="an image file (local or gs://) embedded with the index's model")
    query.add_argument("--uri", help="an indexed image, by its image_uri (its stored vector is the query)")
    query.add_argument("--vector-from", dest="vector_from", help="an indexed row: its id or position in rows.parquet")
    parser.add_argument("--store_uri", help="--store: the store's folder or gs:// prefix")
    parser.add_argument("--model_id", help="--store: the table of this model_id (default: the store's only table)")
    parser.add_argument("--table", help="--store: a table by name (as publish_store's --table)")
    parser.add_argument("-k", type=int, default=10, help="neighbours to print (default: 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--model", help="--image: the model (default: the one the index's model_id names)")
    parser.add_argument("--weights", help="--image: 'random', 'imagenet' or a weights file (default: from model_id)")
    parser.add_argument("--seed", type=int, help="--image with --weights random (default: from model_id)")
    parser.add_argument(
        "--resize_mode", default=ResizeMode.CENTER_CROP, type=ResizeMode, choices=list(ResizeMode),
        help="--image: as the extraction job ran (default: center_crop)",
    )  # fmt: skip
    return parser


def search(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, check and answer one query; returns ``{"query", "model_id", "index", "neighbours"}``."""
    args = arg_parser().parse_args(argv)
    if not 1 <= args.k <= 1000:
        raise SearchError(f"-k must be between 1 and 1000, got {args.k}")
    if args.store:
        from beam_jobs.store_search import search_store

        return search_store(args)
    index = open_index(args.index)
    exclude = None
    if args.image:
        # The model is checked against the index before the image is read or the model loaded.
        spec, resolved = query_model(index.model_id, args.model, args.weights, args.seed)
        vector = embed_image(read_image(args.image), spec, resolved, args.resize_mode)
        query = {"image": args.image}
    else:
        exclude, vector = index.vector_of(args.uri if args.uri else args.vector_from)
        query = {"id": exclude, "image_uri": str(index.uris[index._position[exclude]])}
    return {
        "query": query,
        "model_id": index.model_id,
        "index": index.path,
        "neighbours": index.neighbours(vector, args.k, exclude=exclude),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [f"# {len(result['neighbours'])} nearest to {json.dumps(result['query'])} in {result['index']}"]
    lines += [f"{n['rank']:>3}  {n['score']:.4f}  {n['ds']}  {n['image_uri']}" for n in result["neighbours"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = search(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if "--json" in argv else format_table(result))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
