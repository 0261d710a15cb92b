"""storage.py, publish.py and the commit step: whole-directory replacement, locally and on an object store.

The object-store branch (what gs:// outputs take in production) runs against
``tests.support.objectstore``: an in-memory file system Beam selects by its
``memgs://`` scheme, with gs://'s semantics (no directories, per-object renames).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline

from beam_jobs import publish, storage
from beam_jobs.config import JobConfig
from beam_jobs.contract import MANIFEST
from beam_jobs.runtime import AccountingError, Commit
from tests.support.objectstore import MemObjectStore

OUT = "memgs://bucket/out/embeddings/ds=2026-11-20"


@pytest.fixture
def store():
    MemObjectStore.reset()
    yield MemObjectStore
    MemObjectStore.reset()


def test_object_store_swap_leaves_exactly_the_new_run_with_the_manifest_moved_last(store):
    for name in ("embeddings-00000-of-00002.parquet", "embeddings-00001-of-00002.parquet", MANIFEST):
        store.put(f"{OUT}/{name}", b"old")
    staging = publish.staging_dir_for(OUT, "tok")
    assert staging == "memgs://bucket/out/embeddings/.ds=2026-11-20.staging-tok"
    old = "memgs://bucket/out/embeddings/.ds=2026-11-20.old-tok"
    store.put(f"{staging}/{MANIFEST}", b"{}")
    store.put(f"{staging}/embeddings-00000-of-00001.parquet", b"new")
    store.put(f"{staging}/npy/a-0123.npy", b"new")
    store.log.clear()

    publish.replace_directory(staging, OUT)

    assert store.names("memgs://bucket/out/") == [
        f"{OUT}/embeddings-00000-of-00001.parquet",
        f"{OUT}/{MANIFEST}",
        f"{OUT}/npy/a-0123.npy",
    ]
    assert all(store.objects[p][0] != b"old" for p in store.names(OUT))
    # The previous run is copied aside (its manifest last) before anything in the output changes; then
    # the old manifest goes, the new objects come in, the old data goes, the new manifest comes last.
    assert store.log == [
        ("copy", f"{old}/embeddings-00000-of-00002.parquet"),
        ("copy", f"{old}/embeddings-00001-of-00002.parquet"),
        ("copy", f"{old}/{MANIFEST}"),
        ("delete", f"{OUT}/{MANIFEST}"),
        ("rename", f"{OUT}/embeddings-00000-of-00001.parquet"),
        ("rename", f"{OUT}/npy/a-0123.npy"),
        ("delete", f"{OUT}/embeddings-00000-of-00002.parquet"),
        ("delete", f"{OUT}/embeddings-00001-of-00002.parquet"),
        ("rename", f"{OUT}/{MANIFEST}"),
        ("delete", f"{old}/embeddings-00000-of-00002.parquet"),
        ("delete", f"{old}/embeddings-00001-of-00002.parquet"),
        ("delete", f"{old}/{MANIFEST}"),
    ]


def _stage_run(store, folder: str, run: str, shards: int) -> None:
    names = [f"embeddings-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]
    for name in names:
        store.put(f"{folder}/{name}", run.encode())
    store.put(f"{folder}/{MANIFEST}", json.dumps({"run_id": run, "files": names}).encode())


def _what_a_reader_sees(store) -> str:
    """A reader that waits for the manifest, then reads the files it lists (as the DAG does)."""
    if f"{OUT}/{MANIFEST}" not in store.objects:
        return "unpublished"
    manifest = json.loads(store.objects[f"{OUT}/{MANIFEST}"][0])
    listed = {store.objects.get(f"{OUT}/{name}", (b"missing",))[0].decode() for name in manifest["files"]}
    present = {path for path in store.names(f"{OUT}/") if not path.endswith(MANIFEST)}
    whole = listed == {manifest["run_id"]} and len(present) == len(manifest["files"])
    return f"{manifest['run_id']} whole" if whole else f"mixed: manifest of {manifest['run_id']}, files {listed}"


@pytest.mark.parametrize("transient", [True, False], ids=["store-answers-again", "store-stays-down"])
@pytest.mark.parametrize(("old_shards", "new_shards"), [(3, 2), (2, 3), (2, 2)])
def test_object_store_swap_interrupted_at_every_step_never_loses_the_previous_run(
    store, old_shards, new_shards, transient
):
    """A failure injected at each single object change of the swap, the store then answering again
    at once (transient) or only for the next run (down): the partition reads as one whole run or,
    while the store is down, as not published; after the next run's sweep, the previous run whole
    (or the new one, when it was already in). Never a manifest over mixed or missing files, never
    the previous run lost."""
    seen, swept = [], []
    for allowed in range(60):
        store.reset()
        _stage_run(store, OUT, "old", old_shards)
        staging = publish.staging_dir_for(OUT, "t")
        _stage_run(store, staging, "new", new_shards)
        store.fail_after, store.recover = allowed, transient
        try:
            publish.replace_directory(staging, OUT)
            finished = True
        except Exception:  # noqa: BLE001 - the injected failure
            finished = False
        store.fail_after = None
        seen.append(_what_a_reader_sees(store))
        # The retry of this run (the same token) sweeps before it starts.
        publish.sweep_leftovers(OUT, "t")
        swept.append(_what_a_reader_sees(store))
        if seen[-1] != "unpublished":
            assert swept[-1] == seen[-1]
        # Nothing is left beside the partition: no staging folder, no copy of the previous run.
        assert {p.rsplit("/", 1)[0] for p in store.names("memgs://")} == {OUT}, (allowed, store.names("memgs://"))
        if finished:
            break
    assert seen[0] == "old whole"  # failed before any change
    assert seen[-1] == swept[-1] == "new whole"
    assert set(swept) == {"old whole", "new whole"}, swept
    if transient:  # the swap put the previous run back itself
        assert set(seen) == {"old whole", "new whole"}, seen
    else:
        assert set(seen) == {"old whole", "unpublished", "new whole"}, seen
    # Every object change of the swap was interrupted once: copies aside (old data + manifest), old
    # manifest out, new shards in, stale old shards out (names embed the shard count), new manifest in,
    # then the best-effort deletions of the copy (these do not fail the run).
    changes = (old_shards + 1) + 1 + new_shards + (0 if old_shards == new_shards else old_shards) + 1
    assert len(seen) >= changes + 1


def test_a_later_run_restores_an_interrupted_object_store_swap_once_it_is_settled(store):
    """Another run's sweep leaves a young copy alone (its swap may still be going) and restores an old one."""
    _stage_run(store, OUT, "old", 2)
    staging = publish.staging_dir_for(OUT, "t")
    _stage_run(store, staging, "new", 3)
    store.fail_after = 5  # down after the copy aside, the manifest out and one new shard in
    with pytest.raises(Exception, match="failed"):
        publish.replace_directory(staging, OUT)
    store.fail_after = None
    assert _what_a_reader_sees(store) == "unpublished"
    publish.sweep_leftovers(OUT, "another-run")
    assert _what_a_reader_sees(store) == "unpublished"
    for name in store.names(publish.old_dir_for(OUT, "t")):
        data, mime, _ = store.objects[name]
        store.objects[name] = (data, mime, time.time() - 20 * 60)
    publish.sweep_leftovers(OUT, "another-run")
    assert _what_a_reader_sees(store) == "old whole"
    assert store.names(publish.old_dir_for(OUT, "t")) == []


def test_object_store_swap_into_a_new_partition(store):
    staging = publish.staging_dir_for(OUT, token="t")
    store.put(f"{staging}/{MANIFEST}", b"{}")
    publish.replace_directory(staging, OUT)
    assert store.names("memgs://") == [f"{OUT}/{MANIFEST}"]


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "two-renames"])
def test_local_swap_replaces_the_directory_whole(tmp_path, monkeypatch, exchange):
    out = tmp_path / "ds=2026-11-20"
    out.mkdir()
    (out / "stale.parquet").write_bytes(b"old")
    if not exchange:  # a file system without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    staging = publish.staging_dir_for(str(out), "tok")
    # What an interrupted attempt of this same run left: replaced, not in the way.
    os.makedirs(publish.old_dir_for(str(out), "tok"))
    storage.write_text(storage.join(staging, MANIFEST), "{}")
    inode = os.stat(staging).st_ino
    publish.replace_directory(staging, str(out))
    assert sorted(os.listdir(out)) == [MANIFEST]
    assert os.stat(out).st_ino == inode  # the staged folder itself, moved in
    assert os.listdir(tmp_path) == ["ds=2026-11-20"]


def test_local_swap_is_one_atomic_exchange(tmp_path, monkeypatch):
    """A reader polling the output during the swap always finds a whole run: never no folder."""
    out = tmp_path / "ds=2026-11-20"
    out.mkdir()
    (out / MANIFEST).write_text("old")
    staging = publish.staging_dir_for(str(out), "tok")
    storage.write_text(storage.join(staging, MANIFEST), "new")
    seen = []
    real_rename = os.rename

    def rename(src, dst):  # what a reader sees at each step of the swap
        seen.append((out / MANIFEST).read_text())
        real_rename(src, dst)

    monkeypatch.setattr(storage.os, "rename", rename)
    publish.replace_directory(staging, str(out))
    assert seen == ["new"]  # the one rename left moves the previous run, already swapped out, aside
    assert (out / MANIFEST).read_text() == "new"


@pytest.mark.parametrize(
    ("name", "mime"),
    [("map.html", "text/html"), (MANIFEST, "application/json"), ("map.png", "image/png")],
)
def test_object_store_files_keep_their_real_mime_type(store, name, mime):
    # Browsers opening map.html straight from the bucket need text/html, not JSON.
    path = f"memgs://bucket/maps/{name}"
    storage.write_bytes(path, b"x")
    assert store.mime_type(path) == mime


def test_json_round_trip_on_the_object_store(store):
    storage.write_json(f"{OUT}/{MANIFEST}", {"b": 1, "a": [1, 2]})
    assert storage.read_json(f"{OUT}/{MANIFEST}") == {"a": [1, 2], "b": 1}
    assert storage.list_files(OUT) == [f"{OUT}/{MANIFEST}"]
    assert storage.list_files("memgs://bucket/nothing-here") == []


def test_arrow_schema_from_contract_columns():
    from beam_jobs.contract import EMBEDDING_COLUMNS, PROJECTION_COLUMNS

    emb = storage.arrow_schema(EMBEDDING_COLUMNS)
    assert str(emb.field("embedding").type) == "list<item: float>"
    assert emb.names == [name for name, _ in EMBEDDING_COLUMNS]
    assert str(storage.arrow_schema(PROJECTION_COLUMNS).field("x").type) == "float"


# --------------------------------------------------------------------------- the commit step


def _finish_counting(staging, *, seconds, inputs, done):
    if inputs != done:
        raise AccountingError(f"accounting mismatch: {inputs} inputs but {done} done")
    storage.write_text(storage.join(staging, "extra.txt"), "written by finish")
    return {"inputs": inputs, "rate": round(done / seconds, 3)}


def _commit(output: str, inputs: list[int], done: list[int]):
    cfg = JobConfig(output=output, run_id="run-1")
    staging = publish.staging_dir_for(output, token="tok")

    def stage(count: int) -> int:
        storage.write_text(f"{staging}/part-0.txt", "rows")
        return count

    with TestPipeline(argv=["--runner=FnApiRunner"]) as p:
        # The commit waits for its side inputs, so the staged file exists before it runs.
        sides = {
            "inputs": beam.pvalue.AsSingleton(p | "Inputs" >> beam.Create(inputs)),
            "done": beam.pvalue.AsSingleton(p | "Done" >> beam.Create(done) | "Stage" >> beam.Map(stage)),
        }
        _ = p | "Commit" >> Commit("test_job", cfg, staging, _finish_counting, **sides)
    return staging


def test_commit_publishes_the_manifest_with_the_shared_fields(store):
    staging = _commit(OUT, [3], [3])
    manifest = json.loads(store.objects[f"{OUT}/{MANIFEST}"][0])
    assert manifest["job"] == "test_job"
    assert manifest["run_id"] == "run-1"
    assert manifest["output"] == OUT
    assert manifest["inputs"] == 3
    assert {"started_at", "finished_at", "seconds", "rate"} <= set(manifest)
    assert store.names(f"{OUT}/") == [f"{OUT}/extra.txt", f"{OUT}/{MANIFEST}", f"{OUT}/part-0.txt"]
    assert store.names(staging) == []


def test_commit_refuses_to_publish_when_the_accounting_fails(store):
    store.put(f"{OUT}/{MANIFEST}", b'{"run_id": "previous"}')
    with pytest.raises(
        Exception,
        match=rf"accounting mismatch: 3 inputs but 2 done; nothing was published, {OUT} is as it was",
    ):
        _commit(OUT, [3], [2])
    # The previous run is untouched (the launcher, not the Commit step, removes the staging folder).
    assert store.names(f"{OUT}/") == [f"{OUT}/{MANIFEST}"]
    assert store.objects[f"{OUT}/{MANIFEST}"][0] == b'{"run_id": "previous"}'
    assert FileSystems.exists(publish.staging_dir_for(OUT, token="tok") + "/part-0.txt")


@pytest.mark.slow
def test_extraction_job_publishes_to_an_object_store_and_a_rerun_replaces_it(store, sample_dir, tmp_path):
    """The whole job in this process (FnApiRunner), writing to memgs:// as it writes to gs:// on Dataflow."""
    import glob
    import io
    import shutil

    import pyarrow.parquet as pq

    from beam_jobs.extract_embeddings.pipeline import run

    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(glob.glob(os.path.join(sample_dir, "*.jpg")))[:4]:
        shutil.copy(path, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    common = ["--input", str(folder / "*"), "--output", OUT, "--weights", "random", "--batch_size", "4"]
    store.put(f"{OUT}/embeddings-00000-of-00009.parquet", b"a previous run's shard")

    manifest = run([*common, "--run_id", "first", "--num_shards", "2", "--runner", "FnApiRunner"])

    assert (manifest["inputs"], manifest["embedded"], manifest["failed"]) == (5, 4, 1)
    names = [p.rsplit("/", 1)[-1] for p in store.names(f"{OUT}/")]
    assert sorted(names) == sorted([*manifest["files"]["embeddings"], *manifest["files"]["failures"], MANIFEST])
    assert len(manifest["files"]["embeddings"]) == 2
    # The manifest is moved in last; afterwards the launcher only adds the job's metrics to it.
    assert [path for kind, path in store.log if kind == "rename"][-1] == f"{OUT}/{MANIFEST}"
    assert store.log[-1] == ("put", f"{OUT}/{MANIFEST}")
    assert store.mime_type(f"{OUT}/{MANIFEST}") == "application/json"
    rows = [
        row
        for name in manifest["files"]["embeddings"]
        for row in pq.read_table(io.BytesIO(store.objects[f"{OUT}/{name}"][0])).to_pylist()
    ]
    assert len(rows) == 4
    assert {len(r["embedding"]) for r in rows} == {2048}
    # Nothing left beside the partition: no staging folder, no Beam temp files.
    assert {p.rsplit("/", 1)[0] for p in store.names("memgs://")} == {OUT}

    again = run([*common, "--run_id", "second", "--runner", "FnApiRunner"])
    assert again["run_id"] == "second"
    published = json.loads(store.objects[f"{OUT}/{MANIFEST}"][0])
    assert published["run_id"] == "second"
    assert "metrics" in published
    assert {p.rsplit("/", 1)[0] for p in store.names("memgs://")} == {OUT}


# --------------------------------------------------------------------------- leftovers


def test_sweep_restores_a_killed_local_swap_and_clears_stale_staging(tmp_path):
    out = tmp_path / "ds=2026-11-20"
    # A swap killed between its two renames: no output, the previous run in a .old- folder.
    old = tmp_path / ".ds=2026-11-20.old-0123456789ab"
    old.mkdir()
    (old / MANIFEST).write_text('{"run_id": "previous"}')
    own = tmp_path / ".ds=2026-11-20.staging-aaaaaaaaaaaa"
    stale = tmp_path / ".ds=2026-11-20.staging-bbbbbbbbbbbb"
    fresh = tmp_path / ".ds=2026-11-20.staging-cccccccccccc"
    other = tmp_path / ".ds=2026-11-21.staging-bbbbbbbbbbbb"
    for folder in (own, stale, fresh, other):
        folder.mkdir()
        (folder / "part").write_text("x")
    seven_hours_ago = time.time() - 7 * 3600
    os.utime(stale, (seven_hours_ago, seven_hours_ago))
    os.utime(other, (seven_hours_ago, seven_hours_ago))

    done = publish.sweep_leftovers(str(out), "aaaaaaaaaaaa")

    assert (out / MANIFEST).read_text() == '{"run_id": "previous"}'
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, fresh.name, other.name])
    assert len(done) == 3


def test_sweep_clears_what_an_interrupted_attempt_of_the_same_run_left(tmp_path):
    """A swap killed after the new run was in (the previous one still in .old-<token>), then retried."""
    out = tmp_path / "ds=2026-11-20"
    out.mkdir()
    (out / MANIFEST).write_text('{"run_id": "night"}')
    for leftover in (publish.old_dir_for(str(out), "aaaaaaaaaaaa"), publish.staging_dir_for(str(out), "aaaaaaaaaaaa")):
        os.makedirs(leftover)
        open(os.path.join(leftover, "part"), "w").close()
    assert len(publish.sweep_leftovers(str(out), "aaaaaaaaaaaa")) == 2
    assert os.listdir(tmp_path) == [out.name]
    assert (out / MANIFEST).read_text() == '{"run_id": "night"}'


def test_sweep_on_an_object_store_removes_this_runs_and_stale_staging(store):
    own = publish.staging_dir_for(OUT, "aaaaaaaaaaaa")
    stale = publish.staging_dir_for(OUT, "bbbbbbbbbbbb")
    fresh = publish.staging_dir_for(OUT, "cccccccccccc")
    for folder in (own, stale, fresh):
        store.put(f"{folder}/embeddings-00000-of-00001.parquet", b"x")
        store.put(f"{folder}/nested/a.npy", b"x")
    store.put(f"{OUT}/{MANIFEST}", b"{}")
    for name in store.names(stale):
        data, mime, _ = store.objects[name]
        store.objects[name] = (data, mime, time.time() - 7 * 3600)

    publish.sweep_leftovers(OUT, "aaaaaaaaaaaa")

    assert store.names("memgs://") == sorted([f"{OUT}/{MANIFEST}", *store.names(fresh)])
    assert len(store.names(fresh)) == 2


def test_a_killed_runs_folders_go_at_once_a_live_ones_and_another_hosts_stay(tmp_path):
    """Local staging and .old- names record their owner: a dead process of this host is gone for good,
    so its folders go now; the age rule keeps the rest until they are old."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "ds=2026-11-20"
        out.mkdir()
        (out / MANIFEST).write_text("{}")
        mine = publish.staging_dir_for(str(out), "aaaaaaaaaaaa")
        host = mine.rsplit("@", 1)[1].rsplit("-", 1)[0]
        assert mine.endswith(f"/.ds=2026-11-20.staging-aaaaaaaaaaaa@{host}-{os.getpid()}")
        assert host.replace("_", "-") == socket.gethostname().replace("_", "-")
        names = {
            "killed": f".ds=2026-11-20.staging-bbbbbbbbbbbb@{host}-{gone.pid}",
            "killed_swap": f".ds=2026-11-20.old-bbbbbbbbbbbb@{host}-{gone.pid}",
            "running": f".ds=2026-11-20.staging-cccccccccccc@{host}-{alive.pid}",
            "elsewhere": f".ds=2026-11-20.staging-dddddddddddd@another_host-{gone.pid}",
            "unnamed": ".ds=2026-11-20.staging-eeeeeeeeeeee",  # an older run's name: no owner
            # A retry of the same run (the token) clears its own even while the first attempt lives on.
            "same_run": f".ds=2026-11-20.staging-ffffffffffff@{host}-{alive.pid}",
        }
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "part").write_text("x")

        done = publish.sweep_leftovers(str(out), "ffffffffffff")

        kept = [names["running"], names["elsewhere"], names["unnamed"]]
        assert sorted(os.listdir(tmp_path)) == sorted([out.name, *kept]), done
        assert len(done) == 3
    finally:
        alive.kill()
        alive.wait()
    # On an object store the launcher may be gone while its remote job still writes: age rule only.
    assert publish.staging_dir_for(OUT, "t") == "memgs://bucket/out/embeddings/.ds=2026-11-20.staging-t"
    assert not publish.owner_gone(f"memgs://bucket/out/.x.staging-t@{host}-{gone.pid}")
    assert publish.owner_gone(str(tmp_path / names["killed"]))


def test_create_if_absent_writes_once_locally_and_on_the_object_store(store, tmp_path):
    for path in (str(tmp_path / "ref" / "reference.json"), "memgs://bucket/ref/reference.json"):
        assert publish.create_if_absent(path, b"first")
        assert not publish.create_if_absent(path, b"second")
        assert storage.read_text(path) == "first"
    assert os.listdir(tmp_path / "ref") == ["reference.json"]  # no temp file left by the loser
    assert [kind for kind, path in store.log] == ["create"]
    with pytest.raises(NotImplementedError, match="no create-if-absent write"):
        publish.create_if_absent("s3://bucket/ref/reference.json", b"x")


def test_local_create_if_absent_without_renameat2_uses_a_hard_link(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "_renameat2", lambda a, b, flags: False)  # another C library or file system
    path = str(tmp_path / "reference.json")
    assert publish.create_if_absent(path, b"first")
    assert not publish.create_if_absent(path, b"second")
    assert (tmp_path / "reference.json").read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["reference.json"]


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2-noreplace", "posix-rename"])
def test_publish_directory_if_absent_never_replaces_a_published_folder(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(publish, "_renameat2", lambda a, b, flags: False)
    out = str(tmp_path / "fixed")
    os.mkdir(out)  # made ahead, empty: taken over
    first, second = str(tmp_path / ".fixed.staging-1"), str(tmp_path / ".fixed.staging-2")
    for folder, text in ((first, "first"), (second, "second")):
        os.mkdir(folder)
        (tmp_path / folder / "reference.json").write_text(text)
    assert publish.publish_directory_if_absent(first, out)
    assert not publish.publish_directory_if_absent(second, out)
    assert (tmp_path / "fixed" / "reference.json").read_text() == "first"
    assert os.path.isdir(second)  # the loser's, for it to remove


def test_gcs_create_if_absent_asks_for_generation_0_and_reads_412_as_taken(monkeypatch):
    """Real GCS cannot be reached here: this checks the request (google-cloud-storage's
    ``upload_from_string`` with ``if_generation_match=0``) and that GCS's 412 answer means "taken"."""
    from google.api_core.exceptions import PreconditionFailed

    requests, existing = [], set()

    class Blob:
        def __init__(self, bucket: str, name: str):
            self.bucket, self.name = bucket, name

        def upload_from_string(self, data, **kwargs):
            requests.append((self.bucket, self.name, data, kwargs))
            if kwargs.get("if_generation_match") == 0 and (self.bucket, self.name) in existing:
                raise PreconditionFailed("At least one of the pre-conditions you specified did not hold.")
            existing.add((self.bucket, self.name))

    class Client:
        def bucket(self, name: str):
            return type("Bucket", (), {"blob": lambda _, blob: Blob(name, blob)})()

    path = "gs://b/references/method=pca/fixed/reference.json"
    assert publish.gcs_create_if_absent(path, b"{}", "application/json", client=Client())
    assert not publish.gcs_create_if_absent(path, b"{2}", "application/json", client=Client())
    name = "references/method=pca/fixed/reference.json"
    assert requests == [
        ("b", name, b"{}", {"content_type": "application/json", "if_generation_match": 0}),
        ("b", name, b"{2}", {"content_type": "application/json", "if_generation_match": 0}),
    ]
    # publish.create_if_absent routes gs:// there (Beam's GCS file system has no precondition of its own).
    routed = []
    monkeypatch.setattr(publish, "gcs_create_if_absent", lambda *args: routed.append(args) or True)
    assert publish.create_if_absent(path, b"{}")
    assert routed == [(path, b"{}", "application/json")]


def test_a_failed_run_removes_its_own_staging_and_leaves_the_output(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs.runtime import run_job

    out = tmp_path / "ds=2026-11-20"
    out.mkdir()
    (out / MANIFEST).write_text('{"run_id": "previous"}')
    cfg = JobConfig(output=str(out), run_id="failing-run")
    staged = []

    def explode(_):
        raise RuntimeError("a worker failed")

    def build(p, staging):
        staged.append(staging)
        written = p | beam.Create([1]) | beam.Map(lambda _: storage.write_text(f"{staging}/part-0.txt", "rows"))
        _ = written | beam.Map(explode)

    with pytest.raises(Exception, match="a worker failed"):
        run_job("test_job", cfg, PipelineOptions(["--runner=FnApiRunner"]), build)
    assert staged == [publish.staging_dir_for(str(out), publish.run_token("failing-run"))]
    assert os.listdir(tmp_path) == [out.name]
    assert (out / MANIFEST).read_text() == '{"run_id": "previous"}'


def test_extraction_commit_refuses_a_run_that_lost_uris_before_counting_them():
    """A loss upstream of the counts keeps inputs == embedded + failed; the local listing count catches it."""
    from beam_jobs.extract_embeddings.outputs import finish_extraction

    def finish(inputs, listed, embedded, failed, local_matches):
        return finish_extraction(
            "/staging",
            counts={"inputs": inputs, "listed": listed, "embedded": embedded},
            failures_by_model=[(("", "decode/not_an_image"), failed)],
            npy_count=0,
            local_matches=local_matches,
            seconds=1.0,
            settings={},
            embedding_files=[],
            failure_files=[],
        )

    with pytest.raises(AccountingError, match="matched 200000 entries before the run but only 198777 reached"):
        finish(198_777, 198_777, 0, 198_777, local_matches=200_000)
    assert finish(198_777, 198_777, 0, 198_777, local_matches=198_777)["inputs"] == 198_777
    # Lost inside a shuffle (as stress_accounting.py caught: listed 20,000, 18,923 after Beam's Distinct):
    # the loss would look like duplicates, which a glob cannot produce.
    with pytest.raises(AccountingError, match="20000 were listed and 18923 distinct URIs came out"):
        finish(18_923, 20_000, 18_000, 923, local_matches=20_000)
    # Files that landed after the up-front count are listed once each: that passes.
    assert finish(20_005, 20_005, 20_005, 0, local_matches=20_000)["inputs"] == 20_005
    # Remote globs and manifests are not counted before the run: no listing check there.
    manifest = finish(198_777, 198_777, 0, 198_777, local_matches=None)
    assert (manifest["failed"], manifest["failures_by_reason"]) == (198_777, {"decode/not_an_image": 198_777})


def test_preflight_counts_what_a_local_glob_matches(tmp_path):
    from beam_jobs.config import ExtractConfig
    from beam_jobs.extract_embeddings.inputs import preflight

    for name in ("a.jpg", "b.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    checked = preflight(ExtractConfig(output="/o", input=str(tmp_path / "*.jpg")))
    assert checked.local_matches == 3
    assert checked.manifest_column is None
