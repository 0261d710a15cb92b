"""Run a job exactly as ``python -m beam_jobs.<job>`` does, but stop it at a named point so a test can kill -9 it.

    python -m tests.support.killpoint <point> <module> [job args ...]

with ``KILLPOINT_READY`` naming a file: when the job reaches ``<point>`` (the first
time, in any thread) it writes that file and sleeps, so the test sees it is there
and kills the process group with SIGKILL. Nothing in the jobs knows about this:
the points are wrappers around the jobs' own functions (and Beam's file sink),
installed in this process before the job module runs. The local runner
(FnApiRunner, in_memory or multi_threading) runs every stage in this process, so
the wrappers see every stage.

Points (what the job is doing when it stops):

* ``list``: extraction, listing the input glob into the run's snapshot (before the pipeline; the
  pipeline reads ranges of it), one entry listed;
  reduce_dim, listing the input files (its up-front check; it lists nowhere else);
* ``decode``: extraction, reading the first image;
* ``infer``: extraction, running the model on the first batch;
* ``read``: reduce_dim, opening the first Parquet file inside the pipeline;
* ``fit``: reduce_dim, fitting PCA on the gathered statistics;
* ``write``: either job, a Beam file sink has opened its first temporary shard in staging;
* ``commit``: either job, the manifest is staged and the swap is about to start;
* ``swap``: a local swap between its two renames (the output renamed away, staging not yet in),
  on a file system without an atomic exchange (the exchange is switched off for this point);
* ``swapped``: a local swap done, the previous output (in its ``.old-`` folder) not yet deleted;
* ``store_write``: publish_store, Lance's merge has taken the night's first batch and asks for the next (its data
  is being written, nothing committed);
* ``store_upkeep``: publish_store, the night committed, the index and the upkeep not yet begun.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
import threading
import time

_lock = threading.Lock()
_fired: list[str] = []
_calls: dict[str, int] = {}


def reached(point: str) -> None:
    """Announce ``point`` once (the marker file) and stop this thread until the test kills the process."""
    with _lock:
        if _fired:
            return
        _fired.append(point)
    ready = os.environ["KILLPOINT_READY"]
    with open(ready + ".tmp", "w") as handle:
        handle.write(point)
    os.rename(ready + ".tmp", ready)
    time.sleep(600)
    os._exit(3)  # never reached in a test: the kill comes first


def _nth_call(name: str, nth: int) -> bool:
    with _lock:
        _calls[name] = _calls.get(name, 0) + 1
        return _calls[name] == nth


# Top-level wrappers (Beam pickles callables by reference to their module): each calls the original.
_originals: dict[str, object] = {}


def list_local(pattern):
    # A local glob is listed once, into the snapshot the pipeline then reads (inputs.write_listing).
    pause = _nth_call("list_local", 1)
    for i, path in enumerate(_originals["list_local"](pattern)):
        yield path
        if pause and i == 0:
            reached("list")


def read_input(uri, *args, **kwargs):
    reached("decode")
    return _originals["read_input"](uri, *args, **kwargs)


def run_inference(self, batch, model, inference_args=None):
    reached("infer")
    return _originals["run_inference"](self, batch, model, inference_args)


def list_files(inputs):
    reached("list")
    return _originals["embedding_files"](inputs)


def open_parquet(path):
    # The up-front check opens every file first (one call per file); the pipeline's reads come after.
    if _originals["_pipeline_started"]:
        reached("read")
    return _originals["open_parquet"](path)


def fit_pca_checked(*args, **kwargs):
    reached("fit")
    return _originals["fit_pca_checked"](*args, **kwargs)


def sink_open(self, temp_path):
    handle = _originals["sink_open"](self, temp_path)
    reached("write")
    return handle


def replace_directory(staging, output):
    reached("commit")
    return _originals["replace_directory"](staging, output)


def rename(src, dst, *args, **kwargs):
    _originals["rename"](src, dst, *args, **kwargs)
    if ".old-" in os.path.basename(str(dst)):
        reached("swap")


def no_exchange(a, b):
    return False


def rmtree(path, *args, **kwargs):
    if ".old-" in os.path.basename(str(path).rstrip("/")):
        reached("swapped")
    return _originals["rmtree"](path, *args, **kwargs)


def source_batches(*args, **kwargs):
    for i, batch in enumerate(_originals["source_batches"](*args, **kwargs)):
        if i == 1:
            reached("store_write")
        yield batch


def maintain(*args, **kwargs):
    reached("store_upkeep")
    return _originals["maintain"](*args, **kwargs)


def install(point: str, module: str) -> None:
    from apache_beam.io import filebasedsink

    from beam_jobs import publish, runtime

    def patch(owner, attr: str, wrapper, key: str | None = None) -> None:
        _originals[key or attr] = getattr(owner, attr)
        setattr(owner, attr, wrapper)

    _originals["_pipeline_started"] = False
    if point == "list" and module == "beam_jobs.extract_embeddings":
        from beam_jobs.extract_embeddings import inputs

        patch(inputs, "list_local", list_local)
    elif point == "list":
        from beam_jobs import partitions

        patch(partitions, "embedding_files", list_files)
    elif point == "decode":
        from beam_jobs.extract_embeddings import decode

        patch(decode, "read_input", read_input)
    elif point == "infer":
        from beam_jobs.extract_embeddings.inference import KerasEmbeddingModelHandler

        patch(KerasEmbeddingModelHandler, "run_inference", run_inference)
    elif point == "read":
        from beam_jobs import partitions

        patch(partitions, "open_parquet", open_parquet)
        original_run_job = runtime.run_job

        def run_job(*args, **kwargs):  # the up-front checks are done once the job launches its pipeline
            _originals["_pipeline_started"] = True
            return original_run_job(*args, **kwargs)

        runtime.run_job = run_job
    elif point == "fit":
        from beam_jobs.reduce_dim import fit

        patch(fit, "fit_pca_checked", fit_pca_checked)
    elif point == "write":
        patch(filebasedsink.FileBasedSink, "open", sink_open, "sink_open")
    elif point == "commit":
        patch(publish, "replace_directory", replace_directory)
    elif point == "swap":
        # The two-rename swap, taken where the file system cannot exchange two folders atomically.
        patch(publish, "_exchange", no_exchange)
        patch(os, "rename", rename)
    elif point == "swapped":
        patch(shutil, "rmtree", rmtree)
    elif point == "store_write":
        from beam_jobs.publish_store import rows

        patch(rows, "source_batches", source_batches)
    elif point == "store_upkeep":
        from beam_jobs.publish_store import lance_store

        patch(lance_store, "maintain", maintain)
    else:
        raise SystemExit(f"unknown kill point {point!r} for {module}")


def main() -> None:
    point, module, *args = sys.argv[1:]
    install(point, module)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # Run under the module's real name, so Beam pickles the wrappers by reference to it.
    from tests.support.killpoint import main as real_main

    real_main()
