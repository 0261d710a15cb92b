"""A saved reference reducer: one 2D frame for many nights, and what drift is measured against.

``--save_reference DIR`` writes, once the fit is done, into DIR (replaced whole: an explicit re-fit).
``--reference DIR --fit_reference`` when DIR holds none creates it (``create_reference``): first writer
wins, never replaced, so nights started together (a backfill) all end up in one frame:

  reference.json  format, version, method, parameters, model_id, embedding_dim, the partitions fitted on,
                  seed, fit rows, run id, time, and the sha256 of each file below
  pca.npz         PCA: mean, components, explained variance (and ratio), rows
  pre_pca.npz     UMAP with a pre-PCA: the same for the pre-PCA
  umap.pkl        UMAP: the fitted umap-learn model, pickled (read back only when its sha256 matches)
  drift.npz       the drift space (``drift.DriftSpace``): mean, spread, the drift axes, the seeded sample
  cloud.npz       the sample's 2D coordinates: the grey cloud the maps draw under later nights

``--reference DIR`` only transforms with it. A reference is refused, with a line saying why, when
its format or version is unknown, a file's sha256 differs from the one recorded, or its model_id,
embedding length or method differ from the run's. The commit step's ``reference_and_drift`` gives the
manifest its ``reference`` and ``drift`` blocks (tonight against the frame) and the maps the grey cloud.

Where the files lie: locally they sit beside reference.json, the folder staged whole and moved in by
one rename (a no-replace rename for ``create_reference``). An object store has no folder rename, so
there each writer puts its files under its own prefix (``DIR/fit-<token>/``, named in reference.json
as ``data``) and reference.json goes last: a reader that finds it finds every file it names, and
writers never overwrite each other's files. Creating makes that last write conditional ("only if
absent"); the writer that loses removes its prefix and takes the winner's reference.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import pickle
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_jobs import publish, storage
from beam_jobs.contract import REFERENCE_FILE, REFERENCE_FORMAT, REFERENCE_VERSION
from beam_jobs.reduce_dim.drift import DriftSpace, Moments, build_drift_space, drift_stats
from beam_jobs.reduce_dim.maps import Layer
from beam_jobs.reduce_dim.reduction import PCAModel, Sample, UmapModel, import_umap
from beam_jobs.runtime import InputError

PCA_FILE = "pca.npz"
PRE_PCA_FILE = "pre_pca.npz"
UMAP_FILE = "umap.pkl"
DRIFT_FILE = "drift.npz"
CLOUD_FILE = "cloud.npz"
DATA_PREFIX = "fit-"  # object stores: DIR/fit-<token>/ holds one writer's files
# Rows of the reference's seeded sample kept with it: its grey cloud on the maps and its drift sample.
REFERENCE_SAMPLE = 2000
# The map settings are not part of a reducer's provenance.
THUMBNAIL_SETTINGS = (
    "html_points",
    "thumbnails",
    "thumbnail_budget_mb",
    "thumbnail_time_budget_s",
    "mosaic_grid",
    "trust_sample_size",
)


@dataclass
class Reference:
    """A loaded reference: its record (reference.json), the reducer, the drift space and the grey cloud."""

    folder: str
    info: dict[str, Any]
    model: PCAModel | UmapModel
    drift: DriftSpace
    cloud: np.ndarray  # (rows, 2) float32


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _pca_arrays(pca: PCAModel) -> dict[str, np.ndarray]:
    return {
        "mean": pca.mean,
        "components": pca.components,
        "explained_variance": pca.explained_variance,
        "explained_variance_ratio": pca.explained_variance_ratio,
        "n_rows": np.asarray(pca.n_rows),
    }


def _pca_from(arrays) -> PCAModel:
    return PCAModel(
        np.asarray(arrays["mean"]),
        np.asarray(arrays["components"]),
        np.asarray(arrays["explained_variance"]),
        np.asarray(arrays["explained_variance_ratio"]),
        int(arrays["n_rows"]),
    )


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def _files(model: PCAModel | UmapModel, drift: DriftSpace, cloud: np.ndarray) -> tuple[dict[str, bytes], int]:
    files: dict[str, bytes] = {DRIFT_FILE: _npz(**drift.arrays()), CLOUD_FILE: _npz(xy=np.asarray(cloud, np.float32))}
    if isinstance(model, PCAModel):
        files[PCA_FILE] = _npz(**_pca_arrays(model))
        return files, model.n_rows
    files[UMAP_FILE] = pickle.dumps(model.umap, protocol=pickle.HIGHEST_PROTOCOL)
    if model.pca is not None:
        files[PRE_PCA_FILE] = _npz(**_pca_arrays(model.pca))
    return files, model.fit_rows


def _record(files: dict[str, bytes], fit_rows: int, provenance: dict[str, Any], data: str | None) -> dict[str, Any]:
    info = {
        "format": REFERENCE_FORMAT,
        "version": REFERENCE_VERSION,
        **provenance,
        "fit_rows": int(fit_rows),
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    if data:
        info["data"] = data
    return info


def _encode(info: dict[str, Any]) -> bytes:
    return json.dumps(info, indent=2, sort_keys=True).encode("utf-8")


def _write_files(folder: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        storage.write_bytes(storage.join(folder, name), data)


def _staged_locally(folder: str, files: dict[str, bytes], info: dict[str, Any]) -> str:
    staging = publish.staging_dir_for(folder)  # named with this process: a killed writer's goes at once
    _write_files(staging, {**files, REFERENCE_FILE: _encode(info)})
    return staging


def save_reference(
    folder: str,
    model: PCAModel | UmapModel,
    drift: DriftSpace,
    cloud: np.ndarray,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Write the reference into ``folder``, replacing what is there (``--save_reference``, an explicit
    re-fit: the last writer wins); returns its record (reference.json).

    ``provenance``: method, parameters, model_id, embedding_dim, partitions, seed, run_id.
    Locally the folder is swapped whole. On an object store the new files go under a new prefix,
    reference.json is overwritten (one object: readers see the old record or the new), then the
    previous files go; a reader that read the old record just before gets "missing file", not a mix.
    """
    files, fit_rows = _files(model, drift, cloud)
    if storage.is_local(folder):
        info = _record(files, fit_rows, provenance, None)
        publish.replace_directory(_staged_locally(folder, files, info), folder)
        return info
    prefix = f"{DATA_PREFIX}{uuid.uuid4().hex[:12]}"
    info = _record(files, fit_rows, provenance, prefix)
    _write_files(storage.join(folder, prefix), files)
    storage.write_bytes(storage.join(folder, REFERENCE_FILE), _encode(info))
    keep = {storage.join(folder, REFERENCE_FILE), *(_path(folder, info, name) for name in files)}
    stale = [path for path in storage.list_files(folder) if path not in keep]
    if stale:
        FileSystems.delete(stale)
    return info


def create_reference(
    folder: str,
    model: PCAModel | UmapModel,
    drift: DriftSpace,
    cloud: np.ndarray,
    provenance: dict[str, Any],
) -> tuple[dict[str, Any], bool]:
    """Create the reference in ``folder`` unless one is there: first writer wins, never replaced.

    Returns the record ``folder`` holds afterwards and True when this call published it; False
    when another writer was first (then this call's files are gone and the record is theirs).
    Locally: the whole folder staged beside ``folder`` and moved in by a no-replace rename. Object
    stores: the files under this writer's prefix, then reference.json created only if absent.
    """
    files, fit_rows = _files(model, drift, cloud)
    if storage.is_local(folder):
        info = _record(files, fit_rows, provenance, None)
        staging = _staged_locally(folder, files, info)
        try:
            created = publish.publish_directory_if_absent(staging, folder)
        finally:
            storage.remove_tree(staging)  # nothing left when it moved in; the loser's own copy otherwise
        return (info, True) if created else (_winner(folder), False)
    prefix = f"{DATA_PREFIX}{uuid.uuid4().hex[:12]}"
    info = _record(files, fit_rows, provenance, prefix)
    _write_files(storage.join(folder, prefix), files)
    if publish.create_if_absent(storage.join(folder, REFERENCE_FILE), _encode(info)):
        return info, True
    winner = _winner(folder)
    if winner.get("data") == prefix:  # an earlier try of this same write landed (a retried upload)
        return winner, True
    storage.remove_tree(storage.join(folder, prefix))
    return winner, False


def _winner(folder: str) -> dict[str, Any]:
    if not has_reference(folder):
        raise InputError(
            f"--reference {folder!r} holds files but no {REFERENCE_FILE}: not a saved reducer, refusing to "
            "publish over it (empty the folder or name another)"
        )
    return read_info(folder)


def sweep_leftovers(folder: str, max_age_s: float = 6 * 3600) -> list[str]:
    """Remove what writers that are gone left of a reference; returns what was removed.

    Locally the staging folders beside ``folder`` (``publish.sweep_leftovers``: a dead process of this
    host at once, others after ``max_age_s``). On an object store the ``fit-*`` prefixes that
    reference.json does not name, once older than ``max_age_s`` (younger ones may be a writer's
    that is still going).
    """
    if storage.is_local(folder):
        return publish.sweep_leftovers(folder, token="-", max_age_s=max_age_s)
    try:
        data = read_info(folder).get("data") if has_reference(folder) else None
    except InputError:  # a record this version cannot read: which files it names is unknown, keep all
        return []
    named = storage.join(folder, data) if data else None
    root = storage.join(folder, DATA_PREFIX)
    try:
        found = FileSystems.match([root + "**"])[0].metadata_list
    except Exception:  # noqa: BLE001 - nothing there
        return []
    newest: dict[str, float] = {}
    for meta in found:
        prefix = root + meta.path[len(root) :].partition("/")[0]
        newest[prefix] = max(newest.get(prefix, 0.0), meta.last_updated_in_seconds or 0.0)
    doomed = sorted(p for p, t in newest.items() if p != named and time.time() - t > max_age_s)
    for prefix in doomed:
        storage.remove_tree(prefix)
    return doomed


def has_reference(folder: str) -> bool:
    try:
        return FileSystems.exists(storage.join(folder, REFERENCE_FILE))
    except Exception:  # noqa: BLE001 - an unreachable folder holds none
        return False


def read_info(folder: str) -> dict[str, Any]:
    """reference.json of ``folder``, or InputError when there is none or its format or version is unknown."""
    path = storage.join(folder, REFERENCE_FILE)
    try:
        info = json.loads(_read(path).decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"--reference {folder!r} holds no saved reducer ({REFERENCE_FILE} missing)") from None
    except Exception as exc:  # noqa: BLE001 - unreadable or not JSON
        if not FileSystems.exists(path):
            raise InputError(f"--reference {folder!r} holds no saved reducer ({REFERENCE_FILE} missing)") from None
        raise InputError(f"--reference {folder!r}: {REFERENCE_FILE} cannot be read: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != REFERENCE_FORMAT:
        raise InputError(f"--reference {folder!r}: {REFERENCE_FILE} is not a saved reducer of this project")
    if info.get("version") != REFERENCE_VERSION:
        raise InputError(
            f"--reference {folder!r} has format version {info.get('version')!r}; this version of the job reads "
            f"version {REFERENCE_VERSION} only: save the reference again (--save_reference)"
        )
    return info


def check_reference(info: dict[str, Any], folder: str, method: str, model_id: str, dim: int) -> None:
    """Refuse a reference that cannot project this run's rows into its frame."""
    if info.get("model_id") != model_id:
        raise InputError(
            f"--reference {folder!r} was fitted on embeddings of model_id {info.get('model_id')!r}; the input holds "
            f"{model_id!r}: vectors of different models are not in the same space"
        )
    if info.get("embedding_dim") != dim:
        raise InputError(
            f"--reference {folder!r} was fitted on embeddings of length {info.get('embedding_dim')}; "
            f"the input's are {dim} long"
        )
    if info.get("method") != method:
        raise InputError(f"--reference {folder!r} is a {info.get('method')} reducer, not {method} (--method)")


def _path(folder: str, info: dict[str, Any], name: str) -> str:
    """Where the file ``name`` of the reference ``info`` lies (under its writer's prefix on object stores)."""
    return storage.join(folder, info["data"], name) if info.get("data") else storage.join(folder, name)


def _verified(folder: str, info: dict[str, Any], name: str) -> bytes:
    data = _read(_path(folder, info, name))
    recorded = (info.get("files") or {}).get(name)
    actual = hashlib.sha256(data).hexdigest()
    if recorded != actual:
        raise InputError(
            f"--reference {folder!r}: {name} has sha256 {actual[:16]}..., not the {str(recorded)[:16]}... recorded "
            f"in {REFERENCE_FILE}; it was changed or damaged, refusing to load it"
        )
    return data


def load_reference(folder: str, info: dict[str, Any] | None = None) -> Reference:
    """The reference in ``folder``: every file checked against its recorded sha256 before it is read."""
    info = info or read_info(folder)
    files = info.get("files") or {}
    if info["method"] == "pca":
        model: PCAModel | UmapModel = _pca_from(np.load(io.BytesIO(_verified(folder, info, PCA_FILE))))
    else:
        pre = None
        if PRE_PCA_FILE in files:
            pre = _pca_from(np.load(io.BytesIO(_verified(folder, info, PRE_PCA_FILE))))
        import_umap()  # umap without TensorFlow, before unpickling pulls it in
        reducer = pickle.loads(_verified(folder, info, UMAP_FILE))  # sha256-checked: the file this job saved
        model = UmapModel(pre, reducer, int(info.get("fit_rows", 0)))
    drift = DriftSpace.from_arrays(np.load(io.BytesIO(_verified(folder, info, DRIFT_FILE))))
    cloud = np.asarray(np.load(io.BytesIO(_verified(folder, info, CLOUD_FILE)))["xy"], np.float32)
    return Reference(folder, info, model, drift, cloud)


@dataclass
class Published:
    """What a first-writer-wins fit ends with: the reference ``folder`` holds and the reducer to project with.

    mode: "fitted" (this run published its own) or "loaded" (another run was first: its reducer).
    """

    info: dict[str, Any]
    model: PCAModel | UmapModel
    mode: str


def reference_entry(info: dict[str, Any], folder: str, mode: str) -> dict[str, Any]:
    """The manifest's ``reference`` block: which frame the coordinates are in."""
    return {
        "dir": folder,
        "mode": mode,  # "loaded" (only transformed) or "fitted" (fitted and saved by this run)
        "version": info.get("version"),
        "method": info.get("method"),
        "model_id": info.get("model_id"),
        "partitions": info.get("partitions", []),
        "seed": info.get("seed"),
        "fit_rows": info.get("fit_rows"),
        "run_id": info.get("run_id"),
        "created_at": info.get("created_at"),
    }


# --------------------------------------------------------------------------- the run's frame and drift


def provenance(settings: dict[str, Any], partitions: list[str], seed: int, run_id: str) -> dict[str, Any]:
    """What a reference records of the run that fitted it, from the run's manifest ``settings``
    (``pipeline.run_settings``): the map settings left out, ``partitions`` being the nights fitted on."""
    return {
        "method": settings["method"],
        "parameters": {k: v for k, v in settings["parameters"].items() if k not in THUMBNAIL_SETTINGS},
        "model_id": settings["model_id"],
        "embedding_dim": settings["embedding_dim"],
        "partitions": partitions,
        "seed": seed,
        "run_id": run_id,
    }


def fitted_parts(model: PCAModel | UmapModel, sample: Sample, moments: Moments) -> tuple[DriftSpace, np.ndarray]:
    """(the drift space, the grey cloud) of a reducer fitted by this run, from the reference's seeded sample."""
    x = sample.columns["x"]
    return build_drift_space(x, moments), np.asarray(model.transform(x), np.float32)[:, :2]


def reference_and_drift(
    frame,
    settings: dict[str, Any],
    run_id: str,
    seed: int,
    model=None,
    reference_sample: Sample | None = None,
    reference_moments: Moments | None = None,
    tonight_sample: Sample | None = None,
    tonight_moments: Moments | None = None,
) -> tuple[dict[str, Any], Layer | None]:
    """The manifest's ``reference`` and ``drift`` blocks, and the grey layer for the maps.

    ``frame``: the launcher's ``pipeline.Frame``. "fitted": the drift space and the cloud from the reference's
    sample, saved with the model to the reference folder (``--save_reference``: replaced). "loaded": read
    back (each file's sha256 checked). Then tonight against it.
    """
    if not frame.mode:
        return {}, None
    if frame.mode == "fitted":
        space, cloud = fitted_parts(model, reference_sample, reference_moments)
        fitted_on = frame.fit_summary.partitions if frame.fit_summary else settings["partitions"]
        info = save_reference(frame.folder, model, space, cloud, provenance(settings, fitted_on, seed, run_id))
    else:
        loaded = load_reference(frame.folder, frame.info)
        info, space, cloud = loaded.info, loaded.drift, loaded.cloud
    tonight_x = tonight_sample.columns["x"] if len(tonight_sample) else np.empty((0, space.axes.shape[1]), np.float32)
    drift = drift_stats(space, tonight_x, tonight_moments, seed)
    parts = info.get("partitions") or []
    label = f"reference ({parts[0]} .. {parts[-1]})" if len(parts) > 1 else f"reference ({', '.join(parts)})"
    layer = Layer(label, cloud[:, 0], cloud[:, 1]) if len(cloud) else None
    return {"reference": reference_entry(info, frame.folder, frame.mode), "drift": drift}, layer
