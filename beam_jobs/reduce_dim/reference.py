"""A saved reference reducer: one 2D frame for many nights, and what drift is measured against.

``--save_reference DIR`` (or ``--reference DIR --fit_reference`` when DIR holds none) writes, once the
fit is done, into DIR (replaced whole, through a staging folder like every output):

  reference.json  format, version, method, parameters, model_id, embedding_dim, the partitions fitted on,
                  seed, fit rows, run id, time, and the sha256 of each file below
  pca.npz         PCA: mean, components, explained variance (and ratio), rows
  pre_pca.npz     UMAP with a pre-PCA: the same for the pre-PCA
  umap.pkl        UMAP: the fitted umap-learn model, pickled (read back only when its sha256 matches)
  drift.npz       the drift space (``drift.DriftSpace``): mean, spread, the drift axes, the seeded sample
  cloud.npz       the sample's 2D coordinates: the grey cloud the maps draw under later nights

``--reference DIR`` only transforms with it. A reference is refused, with a line saying why, when
its format or version is unknown, a file's sha256 differs from the one recorded, or its model_id,
embedding length or method differ from the run's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_jobs import storage
from beam_jobs.contract import REFERENCE_FILE, REFERENCE_FORMAT, REFERENCE_VERSION
from beam_jobs.reduce_dim.drift import DriftSpace
from beam_jobs.reduce_dim.reduction import PCAModel, UmapModel, import_umap
from beam_jobs.runtime import InputError

PCA_FILE = "pca.npz"
PRE_PCA_FILE = "pre_pca.npz"
UMAP_FILE = "umap.pkl"
DRIFT_FILE = "drift.npz"
CLOUD_FILE = "cloud.npz"


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


def save_reference(
    folder: str,
    model: PCAModel | UmapModel,
    drift: DriftSpace,
    cloud: np.ndarray,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Write the reference into ``folder`` (replaced whole); returns its record (reference.json).

    ``provenance``: method, parameters, model_id, embedding_dim, partitions, seed, run_id.
    """
    files: dict[str, bytes] = {DRIFT_FILE: _npz(**drift.arrays()), CLOUD_FILE: _npz(xy=np.asarray(cloud, np.float32))}
    if isinstance(model, PCAModel):
        files[PCA_FILE] = _npz(**_pca_arrays(model))
        fit_rows = model.n_rows
    else:
        files[UMAP_FILE] = pickle.dumps(model.umap, protocol=pickle.HIGHEST_PROTOCOL)
        if model.pca is not None:
            files[PRE_PCA_FILE] = _npz(**_pca_arrays(model.pca))
        fit_rows = model.fit_rows
    info = {
        "format": REFERENCE_FORMAT,
        "version": REFERENCE_VERSION,
        **provenance,
        "fit_rows": int(fit_rows),
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    staging = storage.staging_dir_for(folder)
    for name, data in files.items():
        storage.write_bytes(storage.join(staging, name), data)
    storage.write_text(storage.join(staging, REFERENCE_FILE), json.dumps(info, indent=2, sort_keys=True))
    storage.replace_directory(staging, folder)
    return info


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


def _verified(folder: str, info: dict[str, Any], name: str) -> bytes:
    data = _read(storage.join(folder, name))
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
