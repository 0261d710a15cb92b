"""kill -9 either job at each stage of a run: the previous output stays whole, the next run leaves one folder.

Each killed run is the job's own ``python -m`` launch, stopped at a named point by
``tests.support.killpoint`` (wrappers around the jobs' functions, installed in
that process only) and then killed with SIGKILL, process group and all. The two
jobs run side by side, one kill point each per round, so the matrix costs about
the extraction's share (each of its kills after the listing loads the model). The
killed runs of a job share one run id, as an Airflow task's retries do: each attempt's sweep
removes what the one before left, so after a kill at most the killed attempt's own folders are
there (named with its token, host and process id). The run after the last kill is a good one of
another run id (the next trigger of that night): what the killed process left cannot be its own,
and it must still leave exactly the output folder, with no ``.<name>.staging-*`` or
``.<name>.old-*`` sibling, because that process is gone. For extraction the previous
output is a real run with other shards and an ``npy/`` folder, so the good run
also shows a re-run replacing the partition whole (this was test_extract_cli's
two-run test). A swap killed after the exchange (previous run in ``.old-<token>``)
is tested on the sweep in test_storage (beam_jobs.publish), not here: it would cost one more whole run.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_jobs import publish
from beam_jobs.contract import MANIFEST
from devtools.synthetic import clustered_embeddings, write_embeddings
from tests.conftest import ROOT

EXTRACT = "beam_jobs.extract_embeddings"
REDUCE = "beam_jobs.reduce_dim"


def snapshot(folder: str) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): equal snapshots, untouched output."""
    files = {}
    for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)):
        if os.path.isfile(path):
            files[os.path.relpath(path, folder)] = Path(path).read_bytes()
    return files


class Killed:
    """A job launched to stop at ``point``; ``kill`` waits for it there and kills its process group."""

    def __init__(self, point: str, module: str, args: list[str], work: Path):
        self.point, self.module = point, module
        self.ready = work / f"ready-{module.rsplit('.', 1)[-1]}-{point}"
        self.log = work / f"{module.rsplit('.', 1)[-1]}-{point}.log"
        self.ready.unlink(missing_ok=True)  # an earlier kill at the same point left its own
        self.start = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.killpoint", point, module, *args],
                cwd=ROOT,
                # The jobs' temp folder (the listing snapshot) in the test's own: what kills leave is seen there.
                env={**os.environ, "KILLPOINT_READY": str(self.ready), "TMPDIR": str(work / "tmp")},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> float:
        """Seconds the job took to reach its point."""
        try:
            while not self.ready.exists():
                code = self.proc.poll()
                if code is not None:
                    tail = self.log.read_text()[-3000:]
                    raise AssertionError(f"{self.module} exited {code} before {self.point}:\n{tail}")
                assert time.monotonic() - self.start < 300, f"{self.module} did not reach {self.point} in 300 s"
                time.sleep(0.05)
            took = time.monotonic() - self.start
        finally:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        assert self.proc.returncode == -signal.SIGKILL
        assert self.ready.read_text() == self.point
        return took


def reduce_files(manifest: dict) -> list[str]:
    """Every file a reduce_dim manifest names (shards and maps), and the manifest itself."""
    files = manifest["files"]
    return [*files["projections"], *(v for k, v in files.items() if k != "projections"), MANIFEST]


def hidden_siblings(output: str) -> list[str]:
    name = os.path.basename(output)
    return sorted(e for e in os.listdir(os.path.dirname(output)) if e.startswith(f".{name}."))


def leftovers_of(output: str, run_id: str, pid: int) -> set[str]:
    """What the killed attempt of ``run_id`` in process ``pid`` may leave: its staging and .old- folders.

    Their names end in ``@<host>-<pid>``; this test's own (same host) with the pid swapped in.
    """
    token = publish.run_token(run_id)
    ours = f"-{os.getpid()}"
    return {
        os.path.basename(folder).removesuffix(ours) + f"-{pid}"
        for folder in (publish.staging_dir_for(output, token), publish.old_dir_for(output, token))
    }


@pytest.mark.slow
def test_each_job_killed_at_each_stage_keeps_the_previous_output(manifest_run, sample_dir, tmp_path, monkeypatch):
    from beam_jobs.extract_embeddings.inputs import LISTING_DIR_PREFIX
    from beam_jobs.extract_embeddings.pipeline import run as extract
    from beam_jobs.reduce_dim.pipeline import run as reduce

    # Extraction: the previous night is the real output of conftest.manifest_run (its shards, failures
    # and an npy/ folder); tonight's run embeds 4 photos, two per batch, into one shard.
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "tmp").mkdir()
    photos = sorted(glob.glob(os.path.join(sample_dir, "img_*.jpg")))[:4]
    for path in photos:
        shutil.copy(path, images)
    emb_out = str(tmp_path / "embeddings" / "ds=2026-11-20")
    shutil.copytree(manifest_run[0], emb_out)
    emb_args = ["--input", str(images / "*"), "--output", emb_out, "--run_id", "tonight", "--weights", "random"]
    emb_args += ["--batch_size", "2", "--num_shards", "1", "--engine", "tf", "--runner", "FnApiRunner"]
    # reduce_dim: PCA of 120 synthetic rows; the previous night is a real run with two shards.
    x, _ = clustered_embeddings(120, 64, clusters=3, seed=2)
    emb = tmp_path / "synthetic" / "ds=2026-11-20"
    write_embeddings(str(emb), x, "synthetic/a", files=2)
    red_out = str(tmp_path / "projections" / "method=pca" / "ds=2026-11-20")
    common = ["--input", str(emb), "--output", red_out, "--method", "pca", "--no-thumbnails", "--runner", "FnApiRunner"]
    reduce([*common, "--run_id", "yesterday", "--num_shards", "2"])
    red_args = [*common, "--run_id", "tonight"]
    previous = {emb_out: snapshot(emb_out), red_out: snapshot(red_out)}
    assert json.loads(previous[emb_out][MANIFEST])["run_id"] == "scheduled__2026-11-20"

    timings: dict[str, dict[str, float]] = {EXTRACT: {}, REDUCE: {}}
    rounds = [("list", "list"), ("decode", "read"), ("infer", "fit"), ("write", "write"), ("commit", "commit")]
    for emb_point, red_point in rounds:
        jobs = [Killed(emb_point, EXTRACT, emb_args, tmp_path), Killed(red_point, REDUCE, red_args, tmp_path)]
        for job, out in zip(jobs, (emb_out, red_out), strict=True):
            timings[job.module][job.point] = round(job.kill(), 1)
            assert snapshot(out) == previous[out], f"{job.module} killed at {job.point}: the previous output changed"
            left = set(hidden_siblings(out))
            assert left <= leftovers_of(out, "tonight", job.proc.pid), (job.point, left)
            if job.point in ("write", "commit"):  # staged files exist by then: a folder the next run must clear
                assert left, job.point

    # Killed between the two renames of a swap without atomic exchange (some file systems): the
    # previous run is whole in its .old- folder, and the next run's sweep puts it back first (and
    # removes the dead process's staging folder: another run's, but its owner is gone).
    timings[REDUCE]["swap"] = round(Killed("swap", REDUCE, red_args, tmp_path).kill(), 1)
    assert not os.path.exists(red_out)
    (old,) = [e for e in hidden_siblings(red_out) if ".old-" in e]
    assert snapshot(os.path.join(os.path.dirname(red_out), old)) == previous[red_out]
    publish.sweep_leftovers(red_out, publish.run_token("another run"))
    assert snapshot(red_out) == previous[red_out]
    assert hidden_siblings(red_out) == []
    print("seconds to each kill point:", timings)

    # Each killed extraction left its listing snapshot (it cannot clean up) and removed the one before:
    # the last killed run's is there, and the next run removes it.
    def listings() -> list[str]:
        return [e for e in os.listdir(tmp_path / "tmp") if e.startswith(LISTING_DIR_PREFIX)]

    assert len(listings()) == 1, listings()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))

    # The next good run of each, another run id than the killed ones (their folders are not its own:
    # they go because the killed process is gone): exactly its own files in the output, nothing beside it.
    emb_args[emb_args.index("tonight")] = "rerun"
    assert hidden_siblings(emb_out)  # what the last killed extraction left
    manifest = extract(emb_args)
    assert listings() == []
    assert (manifest["run_id"], manifest["inputs"], manifest["embedded"], manifest["failed"]) == ("rerun", 4, 4, 0)
    shards = sorted(glob.glob(os.path.join(emb_out, "embeddings-*.parquet")))
    rows = [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    assert sorted(r["image_uri"] for r in rows) == sorted(str(images / os.path.basename(p)) for p in photos)
    assert {r["run_id"] for r in rows} == {"rerun"}
    # Replaced whole: only what tonight's manifest lists (the previous run's npy/ folder and shards are gone).
    assert sorted(os.listdir(emb_out)) == sorted(
        manifest["files"]["embeddings"] + manifest["files"]["failures"] + [MANIFEST]
    )
    assert os.listdir(os.path.dirname(emb_out)) == [os.path.basename(emb_out)]

    # A reduce_dim run killed with staged files, then the next good run (another run id).
    timings[REDUCE]["write, once more"] = round(Killed("write", REDUCE, red_args, tmp_path).kill(), 1)
    assert hidden_siblings(red_out)
    red_args[red_args.index("tonight")] = "rerun"
    manifest = reduce(red_args)
    assert (manifest["run_id"], manifest["rows"]) == ("rerun", 120)
    assert sorted(os.listdir(red_out)) == sorted(reduce_files(manifest))
    assert os.listdir(os.path.dirname(red_out)) == [os.path.basename(red_out)]


@pytest.mark.slow
def test_publish_store_killed_leaves_the_previous_version_and_the_next_run_completes(tmp_path):
    """publish_store killed while Lance writes the night (nothing committed): the table is the previous version;
    killed after the commit, before the index and upkeep: the night is there and the next run does the rest."""
    import lancedb

    store = str(tmp_path / "store")
    (tmp_path / "tmp").mkdir()  # Killed's TMPDIR: Lance's merge spills there
    nights = {}
    for seed, ds in enumerate(("2026-11-20", "2026-11-21"), start=1):
        folder = tmp_path / "embeddings" / f"ds={ds}"
        x, _ = clustered_embeddings(600, 64, clusters=3, seed=seed)
        write_embeddings(str(folder), x, "synthetic/kill", files=3, prefix=ds)
        nights[ds] = ["--input", str(folder), "--store", "lance", "--store_uri", store, "--index_threshold", "1000"]
    from beam_jobs.publish_store.job import run as publish

    publish(nights["2026-11-20"])
    table = lancedb.connect(store).open_table("synthetic_kill")
    before = (table.version, table.count_rows(), table.count_rows("ds = '2026-11-20'"))
    assert before[1:] == (600, 600)

    Killed("store_write", "beam_jobs.publish_store", nights["2026-11-21"], tmp_path).kill()
    table.checkout_latest()
    assert (table.version, table.count_rows(), table.count_rows("ds = '2026-11-20'")) == before

    Killed("store_upkeep", "beam_jobs.publish_store", nights["2026-11-21"], tmp_path).kill()
    table.checkout_latest()
    assert table.version == before[0] + 1  # the night's one commit, nothing after it
    assert (table.count_rows("ds = '2026-11-20'"), table.count_rows("ds = '2026-11-21'")) == (600, 600)
    assert table.list_indices() == []  # 1,200 rows passed the threshold, but the upkeep never ran

    result = publish(nights["2026-11-21"])
    entry = result["tables"]["synthetic/kill"]
    assert (entry["merge"]["inserted"], entry["merge"]["updated"], entry["table_rows"]) == (0, 600, 1200)
    assert entry["upkeep"]["index_name"]
    assert entry["upkeep"]["unindexed_rows"] == 0
