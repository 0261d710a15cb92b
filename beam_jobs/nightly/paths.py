"""Where a night may read and write: the deployment's allowed roots and the confinement of every path.

Whoever may trigger the night chooses input, output_root and weights: without a fence they could have
the workers read any file the workers can read (its thumbnail lands in map.html) and write under any
folder. Standard library only.
"""

from __future__ import annotations

import os
import re

from beam_jobs.contract import WEIGHTS_IMAGENET, WEIGHTS_RANDOM
from beam_jobs.nightly.readiness import GLOB_CHARS

GCS = "gs://"
# Weights that name a source rather than a file: not confined.
KEYWORD_WEIGHTS = (WEIGHTS_IMAGENET, WEIGHTS_RANDOM)


class PlanError(ValueError):
    """Run parameters that cannot work; the run fails at once, before any job starts, without retries."""


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS)


ALLOWED_ROOTS_ENV = "IMAGE_EMBEDDINGS_ALLOWED_ROOTS"
DATA_ENV = "IMAGE_EMBEDDINGS_DATA"
DEFAULT_DATA = "/opt/airflow/data"  # the Docker image's IMAGE_EMBEDDINGS_DATA


def _control_chars(text: str) -> bool:
    return any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in text)


def allowed_roots(setting: str | None = None) -> list[str]:
    """The deployment's roots: ``IMAGE_EMBEDDINGS_ALLOWED_ROOTS`` (comma-separated local folders and
    ``gs://bucket[/prefix]``), else the data folder (``IMAGE_EMBEDDINGS_DATA``, else /opt/airflow/data).

    Local roots must be absolute (normalised here; symlinks are resolved when paths are compared);
    a bad entry is a PlanError.
    """
    text = os.environ.get(ALLOWED_ROOTS_ENV) if setting is None else setting
    if not (text or "").strip():
        text = os.environ.get(DATA_ENV) or DEFAULT_DATA
    roots: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if _control_chars(item):
            raise PlanError(f"{ALLOWED_ROOTS_ENV}: entry {item!r} holds control characters")
        if is_gcs(item):
            bucket, _, prefix = item[len(GCS) :].partition("/")
            segments = [s for s in prefix.split("/") if s]
            if not bucket or GLOB_CHARS.search(item) or any(s in (".", "..") for s in segments):
                raise PlanError(f"{ALLOWED_ROOTS_ENV}: {item!r} is not a gs://bucket/prefix root")
            roots.append(GCS + "/".join([bucket, *segments]))
        elif os.path.isabs(item) and not GLOB_CHARS.search(item):
            roots.append(os.path.normpath(item))
        else:
            raise PlanError(f"{ALLOWED_ROOTS_ENV}: {item!r} is neither an absolute folder nor a gs:// root")
    return roots


def roots_pattern(roots: list[str], keywords: tuple[str, ...] = ()) -> str:
    """A JSON-schema ``pattern`` (Python and JavaScript regex alike) for the trigger form and the REST API:
    a path under one of ``roots`` (or one of ``keywords``), without control characters or ``.``/``..``
    segments. Lexical only; build_plan also resolves symlinks and stays the authority."""
    special = re.compile(r"([.^$*+?()\[\]{}|\\])")
    under = "|".join(special.sub(r"\\\1", root.rstrip("/")) for root in roots)
    path = r"^(?![\s\S]*[\x00-\x1f\x7f])(?![\s\S]*/\.\.?(/|$))(" + under + r")(/[\s\S]*)?$"
    return f"^({'|'.join(keywords)})$|{path}" if keywords else path


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def confine(name: str, path: str, roots: list[str]) -> tuple[str, str | None]:
    """``path`` normalised, and the reason it is refused (None when it falls under one of ``roots``).

    Local paths must be absolute; ``..`` is resolved before the check, as are symlinks in the part
    of the path before any wildcard (a link out of the data folder counts where it points).
    On gs:// a ``.`` or ``..`` segment is refused outright (object names are not resolved).
    """
    where = f"the allowed roots ({', '.join(roots)}; set by {ALLOWED_ROOTS_ENV})"
    if _control_chars(path):
        return path, f"{name} {path!r} holds control characters (newline, tab, ...)"
    if is_gcs(path):
        bucket, _, rest = path[len(GCS) :].partition("/")
        segments = rest.split("/")
        if any(s in (".", "..") for s in segments):
            return path, f"{name} {path!r}: '.' and '..' segments are not allowed in gs:// paths"
        # A trailing '/' (a folder) is kept: it decides how the input glob is made.
        normal = GCS + "/".join([bucket, *(s for s in segments[:-1] if s), segments[-1]]) if "/" in path[5:] else path
        candidates = [normal.rstrip("/")]
    else:
        if not os.path.isabs(path):
            return path, (
                f"{name} {path!r} is a relative path (it would resolve against the worker's current folder): "
                f"give an absolute path under {where}"
            )
        normal = os.path.normpath(path) + ("/" if path.endswith("/") and path.rstrip("/") else "")
        fixed = GLOB_CHARS.split(normal, maxsplit=1)[0]
        # Resolve the literal folder part only: wildcards are expanded by the job, under that folder.
        head = fixed if fixed == normal else os.path.dirname(fixed)
        local = [root for root in roots if not is_gcs(root)]
        checks = [(os.path.normpath(normal), local), (os.path.realpath(head or "/"), map(os.path.realpath, local))]
        if all(any(_under(candidate, root) for root in among) for candidate, among in checks):
            return normal, None
        return normal, f"{name} {path!r} is outside {where}"
    if any(_under(candidates[0], root) for root in roots if is_gcs(root)):
        return normal, None
    return normal, f"{name} {path!r} is outside {where}"
