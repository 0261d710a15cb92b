"""What real folders and buckets hold: FIFOs, huge uploads, dangling symlinks, folders, stalled reads.

Each becomes a failure record with its own reason, counted in the inputs; none is opened
when it must not be, none is read whole into memory, none hangs the job.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.contract import DEFAULT_MAX_BYTES, ResizeMode
from beam_jobs.extract_embeddings.decode import FAILURES_TAG, DecodeImages, DecodeParams, ImageMeta, read_input
from beam_jobs.extract_embeddings.embed import to_row
from beam_jobs.extract_embeddings.images import ImageError
from beam_jobs.extract_embeddings.inputs import (
    LISTING_DIR_PREFIX,
    ReadImageURIs,
    list_batch_size,
    list_in_batches,
    list_local,
    listing_folder,
    listing_prefix,
    read_listing_range,
    write_listing,
)
from tests.conftest import ROOT
from tests.support.ci import run_unprivileged
from tests.support.objectstore import MemObjectStore

RUNNER_ARGS = ["--runner=FnApiRunner"]


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if a read blocks: the FIFO case did, for 300 s and more."""

    def alarm(*_):
        raise TimeoutError("the read blocked")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def hostile_dir(tmp_path, sample_dir):
    """Two real photos beside a FIFO, a 3 GB sparse file, a dangling symlink, a folder and a good symlink."""
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    photos = sorted(f for f in os.listdir(sample_dir) if f.endswith(".jpg"))[:2]
    for name in photos:
        shutil.copy(os.path.join(sample_dir, name), folder / name)
    os.mkfifo(folder / "pipe.jpg")
    with open(folder / "huge.jpg", "wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse: 3 GB long, nothing on disk
    os.symlink(tmp_path / "gone.jpg", folder / "dangling.jpg")
    os.symlink(folder / photos[0], folder / "linked.jpg")
    (folder / "folder.jpg").mkdir()
    expected = {
        **{str(folder / p): None for p in photos},
        str(folder / "linked.jpg"): None,
        str(folder / "pipe.jpg"): ("read", "not_a_regular_file"),
        str(folder / "huge.jpg"): ("read", "too_large"),
        str(folder / "dangling.jpg"): ("read", "dangling_symlink"),
        str(folder / "folder.jpg"): ("read", "not_a_regular_file"),
    }
    return str(folder), expected


def _reason(uri: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = 300) -> tuple[str, str] | None:
    try:
        read_input(uri, max_bytes, timeout_s)
    except ImageError as exc:
        return exc.stage, exc.reason
    return None


# A fresh process reads the given URIs with read_input and prints how far its memory peaked over what it held before
# the reads (KiB): after its imports it resets its own high-water mark (VmHWM; /proc/self/clear_refs "5"), and
# reports VmHWM minus VmRSS at that point. (Not ru_maxrss: it carries the parent's peak across fork and exec.)
# "baseline" reads nothing; "unguarded" drops the stat() checks made before opening, as if they were gone: the
# control, which shows that the measurement sees a read that is bounded only by --max_bytes.
PEAK_CHILD = """
import re, sys
from beam_jobs.contract import DEFAULT_MAX_BYTES
from beam_jobs.extract_embeddings import decode
from beam_jobs.extract_embeddings.images import ImageError

def kib(field):
    with open("/proc/self/status") as status:
        return int(re.search(field + r":\\s+(\\d+) kB", status.read()).group(1))

mode, *uris = sys.argv[1:]
if mode == "unguarded":
    decode._check_local = lambda path, max_bytes: None
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
start = kib("VmRSS")
for uri in uris:
    try:
        decode.read_input(uri, DEFAULT_MAX_BYTES, 300)
    except ImageError as exc:
        print(exc.reason, file=sys.stderr)
print(kib("VmHWM") - start)
"""


def test_each_hostile_entry_gets_its_own_reason_without_being_opened(hostile_dir, no_hang):
    _, expected = hostile_dir
    assert {uri: _reason(uri) for uri in expected} == expected


@pytest.mark.slow  # child processes measuring peak RSS: ~7 s
def test_reading_the_hostile_entries_does_not_raise_peak_memory(hostile_dir):
    """The 3 GB file is refused from its size, not read. Measured in fresh processes (this one's ru_maxrss is a
    high-water mark an earlier test may have set higher): every entry read against a baseline with the same
    imports that reads nothing, and a control that reads the 3 GB file without the size check."""
    folder, expected = hostile_dir
    huge = os.path.join(folder, "huge.jpg")
    children = {
        mode: subprocess.Popen(
            [sys.executable, "-c", PEAK_CHILD, mode, *uris],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for mode, uris in (("baseline", []), ("guarded", list(expected)), ("unguarded", [huge]))
    }
    growth_kib = {}
    for mode, child in children.items():
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        growth_kib[mode] = int(out.split()[-1])
        if mode == "guarded":  # each hostile entry was refused, with its reason
            assert sorted(err.split()) == sorted(r for _, r in filter(None, expected.values())), err[-3000:]
    # Reading every hostile entry, the 3 GB file included, peaks less than 64 MiB over the baseline...
    assert growth_kib["guarded"] - growth_kib["baseline"] < 64 * 1024, growth_kib
    # ...where a read bounded only by --max_bytes (512 MiB) shows as such: this measurement can fail.
    assert growth_kib["unguarded"] - growth_kib["baseline"] > 400 * 1024, growth_kib


def test_a_vanished_file_is_not_found(tmp_path):
    assert _reason(str(tmp_path / "removed-after-listing.jpg")) == ("read", "not_found")


def test_an_unreadable_file_is_permission_denied(open_tmp_path):
    # Root reads any file (and CI runs as root): a child process imports everything, then drops to user nobody
    # when root, and reads (tests/support/ci.py). The folder is open to nobody, so only the file's mode refuses.
    path, beside = open_tmp_path / "secret.jpg", open_tmp_path / "public.jpg"
    path.write_bytes(b"x")
    path.chmod(0)
    beside.write_bytes(b"y")
    proc = run_unprivileged(
        "for uri in sys.argv[1:]:\n"
        "    try:\n        print(read_input(uri, 100, 5))\n"
        "    except ImageError as exc:\n        print(exc.stage, exc.reason)",
        str(path),
        str(beside),
        imports="from beam_jobs.extract_embeddings.decode import read_input\n"
        "from beam_jobs.extract_embeddings.images import ImageError",
    )
    assert proc.stdout.split() == ["read", "permission_denied", "b'y'"], proc.stderr[-2000:]


def test_max_bytes_is_checked_before_reading_and_is_inclusive(tmp_path):
    path = tmp_path / "ten.jpg"
    path.write_bytes(b"0123456789")
    assert _reason(str(path), max_bytes=9) == ("read", "too_large")
    assert _reason(str(path), max_bytes=10) is None


def test_object_store_reads_are_bounded_in_bytes_and_time():
    MemObjectStore.reset()
    MemObjectStore.put("memgs://b/big.jpg", b"x" * 100)
    MemObjectStore.put("memgs://b/stalled.jpg", b"x")
    MemObjectStore.stalls["memgs://b/stalled.jpg"] = 3.0
    try:
        assert _reason("memgs://b/big.jpg", max_bytes=99) == ("read", "too_large")
        assert _reason("memgs://b/big.jpg", max_bytes=100) is None
        assert _reason("memgs://b/stalled.jpg", timeout_s=0.2) == ("read", "timeout")
        assert _reason("memgs://b/absent.jpg") == ("read", "not_found")
    finally:
        MemObjectStore.reset()


def test_local_listing_keeps_what_beams_listing_drops(hostile_dir):
    folder, expected = hostile_dir
    assert sorted(list_local(os.path.join(folder, "*"))) == sorted(expected)
    assert sorted(list_local(folder + "/")) == sorted(expected)
    assert list(list_local(os.path.join(folder, "pipe.jpg"))) == [os.path.join(folder, "pipe.jpg")]
    assert list(list_local(os.path.join(folder, "nothing-*.png"))) == []


@pytest.mark.parametrize("listing", ["in the pipeline", "snapshot before the run"])
def test_the_pipeline_counts_every_hostile_entry_once(hostile_dir, no_hang, tmp_path, listing):
    folder, expected = hostile_dir
    failures = sorted((uri, *reason) for uri, reason in expected.items() if reason)
    good = sorted(uri for uri, reason in expected.items() if reason is None)
    pattern = os.path.join(folder, "*")
    snapshot = write_listing(pattern, str(tmp_path / "listing.jsonl")) if listing.startswith("snapshot") else None
    with TestPipeline(argv=RUNNER_ARGS) as p:
        read = p | ReadImageURIs(pattern, listing=snapshot)
        decoded = read["uris"] | DecodeImages(DecodeParams((224, 224), ResizeMode.CENTER_CROP, 10_000_000), "run")
        assert_that(read["uris"], equal_to(sorted(expected)), label="inputs")
        assert_that(decoded.images | beam.Map(lambda item: item[0].image_uri), equal_to(good), label="decoded")
        assert_that(
            decoded[FAILURES_TAG] | beam.Map(lambda r: (r["image_uri"], r["stage"], r["error"])),
            equal_to(failures),
            label="failed",
        )


def test_a_listing_snapshot_keeps_odd_names_and_spreads_small_nights(tmp_path):
    """A name may hold a newline or bytes that are not UTF-8; small nights get one URI per range."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["a.jpg", "two\nlines.jpg", "caf\u00e9.jpg", os.fsdecode(b"latin1-\xe9.jpg")]
    for name in names:
        (folder / name).write_bytes(b"x")
    snapshot = write_listing(str(folder / "*"), str(tmp_path / "listing.jsonl"))
    assert snapshot.count == 4
    assert [r.uris for r in snapshot.ranges] == [1, 1, 1, 1]
    read = [uri for piece in snapshot.ranges for uri in read_listing_range(piece, snapshot.path)]
    assert sorted(read) == sorted(str(folder / n) for n in names)
    assert [list_batch_size(n) for n in (0, 1, 256, 257, 2_000, 128_000, 200_000, 10**7)] == [
        1,
        1,
        1,
        2,
        8,
        500,
        500,
        500,
    ]


def test_a_killed_runs_listing_snapshot_is_removed_by_the_next_run_not_a_live_ones(tmp_path):
    """A folder names its run's process: a dead one's goes, a live one's (another run now) stays."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = listing_prefix()  # "extract-listing-<this host>-"
        assert here.startswith(LISTING_DIR_PREFIX)
        elsewhere = f"{LISTING_DIR_PREFIX}another-host-{gone.pid}-x"  # its process ids are not ours to judge
        for name in (f"{here}{gone.pid}-x", f"{here}{alive.pid}-x", elsewhere):
            (tmp_path / name).mkdir()
            (tmp_path / name / "listing.jsonl").write_text('"/a.jpg"\n')
        (tmp_path / "unrelated-123-x").mkdir()
        with listing_folder(str(tmp_path)) as mine:
            assert sorted(os.listdir(tmp_path)) == sorted(
                [f"{here}{alive.pid}-x", elsewhere, os.path.basename(mine), "unrelated-123-x"]
            )
            assert os.path.basename(mine).startswith(f"{here}{os.getpid()}-")
        assert not os.path.exists(mine)
    finally:
        alive.kill()
        alive.wait()


def test_a_non_finite_vector_becomes_a_failure_not_a_row():
    meta = ImageMeta("/i/a.jpg", "00", 10, 10)
    good = (ImageMeta("/i/b.jpg", "01", 10, 10), PredictionResult(None, np.ones(4, np.float32), "m"))
    nan = (meta, PredictionResult(None, np.array([1, np.nan, np.inf, 0], np.float32), "m"))
    with TestPipeline(argv=RUNNER_ARGS) as p:
        out = p | beam.Create([good, nan]) | beam.Map(to_row, "run").with_outputs(FAILURES_TAG, main="rows")
        assert_that(out.rows | beam.Map(lambda r: r["image_uri"]), equal_to(["/i/b.jpg"]), label="rows")
        assert_that(
            out[FAILURES_TAG] | beam.Map(lambda r: (r["image_uri"], r["stage"], r["error"], r["message"])),
            equal_to(
                [("/i/a.jpg", "inference", "non_finite", "the model returned 2 non-finite value(s) (NaN or inf) of 4")]
            ),
            label="failures",
        )


def test_a_remote_glob_is_listed_in_the_pipeline_and_shuffled_in_batches():
    """An object-store glob has no snapshot (its workers list it): each name once, counted, in batches of 3 here."""
    MemObjectStore.reset()
    names = [f"memgs://b/night/img_{i:04d}.jpg" for i in range(600)]
    for name in names:
        MemObjectStore.put(name, b"x")
    MemObjectStore.put("memgs://b/other/img.jpg", b"x")
    try:
        assert [len(batch) for batch in list_in_batches("memgs://b/night/*")] == [3] * 200
        with TestPipeline(argv=RUNNER_ARGS) as p:
            read = p | ReadImageURIs("memgs://b/night/*")
            assert_that(read["uris"], equal_to(names), label="uris")
            assert_that(read["listed"] | beam.CombineGlobally(sum), equal_to([600]), label="listed")
    finally:
        MemObjectStore.reset()
