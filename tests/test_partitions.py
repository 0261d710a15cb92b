"""beam_jobs.partitions: the one reader of extraction output (partitions, files, the launcher's check, windows).

Real Parquet files in the extraction's format (devtools.synthetic), real folders; hostile inputs are real
files too: Parquet files cut short, emptied or overwritten, unreadable, a FIFO.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_jobs.contract import EMBEDDING_COLUMNS
from beam_jobs.partitions import (
    NO_PARTITION,
    REQUIRED_COLUMNS,
    embedding_files,
    file_pattern,
    files_beside,
    folder_name,
    has_files,
    inspect_inputs,
    partition_folders,
    partition_of,
    read_manifest,
    window_partitions,
)
from beam_jobs.runtime import InputError
from devtools.synthetic import write_embeddings
from tests.support.ci import run_unprivileged

DIM = 32


def vectors(rows: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> str:
    """Two nights of one model (60 rows over 2 files, 90 over 3), and a staging folder beside them."""
    root = tmp_path_factory.mktemp("emb") / "embeddings"
    write_embeddings(str(root / "ds=2026-11-19"), vectors(60), "synthetic/a", files=2, prefix="a")
    write_embeddings(str(root / "ds=2026-11-20"), vectors(90, seed=1), "synthetic/a", files=3, prefix="b")
    # A running (or killed) job's staging folder: never a partition, never read.
    write_embeddings(str(root / ".ds=2026-11-21.staging-abc"), vectors(5), "synthetic/a", files=1, prefix="c")
    return str(root)


def good_partition(base, rows: int = 6, files: int = 2) -> list[str]:
    return write_embeddings(str(base / "ds=2026-11-20"), vectors(rows, 16), "m", files=files)


def truncate(path: str, keep: float = 0.5) -> None:
    """Cut a real file's bytes (a copy interrupted mid-way): footer and magic bytes are gone."""
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(int(size * keep))


# --------------------------------------------------------------------------- paths and patterns


def test_partition_and_patterns():
    assert partition_of("/d/embeddings/ds=2026-11-20/embeddings-00000-of-00002.parquet") == "2026-11-20"
    assert partition_of("gs://b/x/embeddings-0.parquet") is None
    assert partition_of("/d/ds=2026-11-19/x/ds=2026-11-20/e.parquet") == "2026-11-20"  # the innermost
    assert file_pattern("/d/ds=2026-11-20") == "/d/ds=2026-11-20/embeddings-*.parquet"
    assert file_pattern("gs://b/e/ds=2026-11-*/") == "gs://b/e/ds=2026-11-*/embeddings-*.parquet"
    assert file_pattern("/d/ds=1/embeddings-*.parquet") == "/d/ds=1/embeddings-*.parquet"
    assert folder_name("gs://b/e/ds=2026-11-20/embeddings-0.parquet") == "ds=2026-11-20"
    files = ["/e/ds=2026-11-20/a.parquet", "/e/ds=2026-11-19/b.parquet", "/e/ds=2026-11-20/c.parquet"]
    assert partition_folders(files) == ["ds=2026-11-19", "ds=2026-11-20"]


def test_required_columns_are_extraction_output_columns():
    assert set(REQUIRED_COLUMNS) <= {name for name, _ in EMBEDDING_COLUMNS}


def test_embedding_files_skip_hidden_folders_and_refuse_an_input_that_matches_nothing(nights, tmp_path):
    files = embedding_files([os.path.join(nights, "ds=*")])
    assert len(files) == 5
    assert not any("/." in f for f in files)
    assert embedding_files([os.path.join(nights, "ds=2026-11-20"), os.path.join(nights, "ds=2026-11-2*")]) == sorted(
        f for f in files if "ds=2026-11-20" in f
    )  # an input given twice is read once
    with pytest.raises(InputError, match=r"--input '.*nothing.*' matches no embeddings files"):
        embedding_files([os.path.join(nights, "ds=2026-11-20"), str(tmp_path / "nothing" / "ds=2026-11-20")])


def test_inspect_inputs_covers_partitions(nights):
    s = inspect_inputs([os.path.join(nights, "ds=2026-11-*")])
    assert (s.rows, s.rows_total, s.dim, s.model_id) == (150, 150, DIM, "synthetic/a")
    assert s.partitions == ["2026-11-19", "2026-11-20"]
    assert len(s.files) == 5


def test_files_outside_a_partition_are_labelled_no_partition(tmp_path):
    write_embeddings(str(tmp_path / "loose"), vectors(4), "m", files=1)
    assert inspect_inputs([str(tmp_path / "loose")]).partitions == [NO_PARTITION]


def test_refuses_no_rows_mixed_lengths_and_mixed_models(tmp_path, nights):
    x = vectors(10)
    with pytest.raises(InputError, match="matches no embeddings files"):
        inspect_inputs([str(tmp_path / "nothing" / "ds=2026-11-20")])

    empty = tmp_path / "empty" / "ds=2026-11-20"
    write_embeddings(str(empty), np.zeros((0, 8), np.float32), "m", files=1)
    with pytest.raises(InputError, match="no input rows"):
        inspect_inputs([str(empty)])

    short = tmp_path / "short" / "ds=2026-11-21"
    write_embeddings(str(short), x[:, :16], "synthetic/a", files=1)
    with pytest.raises(InputError, match=rf"different embedding lengths: length 16 .*; length {DIM}"):
        inspect_inputs([str(short), os.path.join(nights, "ds=2026-11-20")])

    other = tmp_path / "other" / "ds=2026-11-21"
    write_embeddings(str(other), x, "resnet50/other-weights", files=1, prefix="o")
    mixed = [str(other), os.path.join(nights, "ds=2026-11-20")]
    with pytest.raises(InputError, match=r"mixes embeddings of 2 models: .*pick one with --model_id"):
        inspect_inputs(mixed)
    picked = inspect_inputs(mixed, model_id="resnet50/other-weights")
    assert (picked.rows, picked.rows_total) == (10, 100)
    with pytest.raises(InputError, match="has no rows in the input"):
        inspect_inputs(mixed, model_id="nope")


def test_one_partition_may_hold_models_of_different_lengths(tmp_path):
    """``--model a,b`` writes both models' rows into the same files: only the chosen model's lengths must agree."""
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    rows = [("/a", [0.5] * 8, "a"), ("/b", [0.5] * 12, "b"), ("/c", [0.5] * 8, "a")]
    table = pa.Table.from_pydict(
        {
            "image_uri": [r[0] for r in rows],
            "embedding": [r[1] for r in rows],
            "model_id": [r[2] for r in rows],
            "content_sha256": ["0"] * 3,
            "width": [1] * 3,
            "height": [1] * 3,
            "run_id": ["r"] * 3,
        }
    )
    pq.write_table(table, folder / "embeddings-00000-of-00001.parquet")
    assert (inspect_inputs([str(folder)], "a").dim, inspect_inputs([str(folder)], "b").dim) == (8, 12)
    assert inspect_inputs([str(folder)], "b").rows == 1


def test_refuses_files_that_are_not_extraction_output(tmp_path):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    pq.write_table(pa.table({"image_uri": ["a"], "x": [1.0]}), folder / "embeddings-00000-of-00001.parquet")
    with pytest.raises(InputError, match="is not extraction output: it lacks column"):
        inspect_inputs([str(folder)])


# --------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_parquet", "footer_only_cut"])
def test_inspect_refuses_a_truncated_or_corrupt_file_naming_it(tmp_path, damage):
    paths = good_partition(tmp_path)
    bad = paths[1]
    if damage == "truncated":
        truncate(bad)
    elif damage == "empty":
        truncate(bad, 0.0)
    elif damage == "not_parquet":
        with open(bad, "wb") as handle:
            handle.write(b"<html>not a parquet file</html>" * 10)
    else:  # the last 4 bytes (the closing magic) lost
        truncate(bad, 1 - 4 / os.path.getsize(bad))
    with pytest.raises(InputError, match="cannot be read as Parquet") as caught:
        inspect_inputs([str(tmp_path / "ds=2026-11-20")])
    message = str(caught.value)
    assert message.startswith(bad)
    assert "\n" not in message


def test_inspect_refuses_an_unreadable_file_naming_it(open_tmp_path):
    # Root reads a file whatever its mode (and CI runs as root): the check runs in a child process that imports
    # as this user, then drops to user nobody when root (tests/support/ci.py).
    paths = good_partition(open_tmp_path)
    os.chmod(paths[0], 0)
    proc = run_unprivileged(
        "try:\n    inspect_inputs([sys.argv[1]])\nexcept InputError as exc:\n    print(exc)\nelse:\n    print('read')",
        str(open_tmp_path / "ds=2026-11-20"),
        imports="from beam_jobs.partitions import inspect_inputs\nfrom beam_jobs.runtime import InputError",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"{paths[0]} cannot be read as Parquet"), proc.stdout + proc.stderr[-2000:]


def test_inspect_refuses_a_fifo_without_opening_it(tmp_path):
    paths = good_partition(tmp_path)
    os.remove(paths[1])
    os.mkfifo(paths[1])  # opening it for reading would block until a writer comes
    with pytest.raises(InputError, match=f"{paths[1]} is a FIFO; only regular Parquet files are read"):
        inspect_inputs([str(tmp_path / "ds=2026-11-20")])


# --------------------------------------------------------------------------- nights beside one another


def test_window_is_the_night_and_the_earlier_nights_that_exist(tmp_path):
    root = tmp_path / "embeddings"
    for ds in ("2026-11-15", "2026-11-18", "2026-11-20"):
        write_embeddings(str(root / f"ds={ds}"), vectors(4), "m", files=1)
    (root / "ds=2026-11-19").mkdir()  # a folder without embeddings files is no night
    tonight = str(root / "ds=2026-11-20")
    night, folders = window_partitions([tonight + "/"], 5)
    assert night == "2026-11-20"
    assert folders == {"2026-11-18": str(root / "ds=2026-11-18"), "2026-11-20": tonight}  # 11-15 is 6 days back
    assert window_partitions([tonight], 1) == ("2026-11-20", {"2026-11-20": tonight})
    assert list(window_partitions([tonight], 6)[1]) == ["2026-11-15", "2026-11-18", "2026-11-20"]
    assert has_files(tonight)
    assert not has_files(str(root / "ds=2026-11-19"))
    assert not has_files(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="is not a partition folder"):
        window_partitions([str(root / "ds=2026-11-*")], 3)


def test_files_beside_are_the_other_partitions_of_the_output(tmp_path, nights):
    files = files_beside(os.path.join(nights, "ds=2026-11-21"))  # the staging folder of 11-21 is not a night
    assert partition_folders(files) == ["ds=2026-11-19", "ds=2026-11-20"]
    assert len(files) == 5
    # The output's own partition is replaced by the run that writes it: never its own history.
    assert partition_folders(files_beside(os.path.join(nights, "ds=2026-11-20"))) == ["ds=2026-11-19"]
    assert files_beside(str(tmp_path / "nothing" / "ds=2026-11-21")) == []


def test_read_manifest_is_none_without_a_readable_one(tmp_path):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    assert read_manifest(str(folder)) is None
    (folder / "manifest.json").write_text("{not json")
    assert read_manifest(str(folder)) is None
    (folder / "manifest.json").write_text("[1, 2]")
    assert read_manifest(str(folder)) is None
    (folder / "manifest.json").write_text(json.dumps({"run_id": "r1", "inputs": 3}))
    assert read_manifest(str(folder)) == {"run_id": "r1", "inputs": 3}
