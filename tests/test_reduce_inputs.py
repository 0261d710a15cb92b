"""beam_jobs.reduce_dim.inputs: the row check before a run, ReadEmbeddings (NaN/inf rows left out and counted).

Listing and checking the files (partitions, patterns, hostile files) is beam_jobs.partitions: tests/test_partitions.py.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam import coders
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from sklearn.decomposition import PCA

from beam_jobs.config import ConfigError
from beam_jobs.extract_embeddings.outputs import embedding_schema
from beam_jobs.partitions import inspect_inputs
from beam_jobs.reduce_dim.fit import FitPCA
from beam_jobs.reduce_dim.inputs import DroppedRowsFn, ReadEmbeddings, drop_non_finite, require_rows
from beam_jobs.reduce_dim.records import Block, BlockCoder, DroppedRows
from beam_jobs.reduce_dim.reduction import MIN_FIT_ROWS
from beam_jobs.runtime import InputError
from devtools.synthetic import clustered_embeddings, write_embeddings

RUNNER = ["--runner=FnApiRunner"]


def write_clustered(base) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
    """3000 clustered 2048-d rows over two nightly partitions, in the extraction output format.

    Returns (embeddings root, rows, cluster labels, URIs in row order).
    """
    x, labels = clustered_embeddings(3000, 2048, clusters=6, seed=11)
    root = base / "embeddings"
    write_embeddings(str(root / "ds=2026-11-19"), x[:1500], "synthetic/a", files=2, prefix="a")
    write_embeddings(str(root / "ds=2026-11-20"), x[1500:], "synthetic/a", files=3, prefix="b")
    uris = [f"/synthetic/a/img_{j:07d}.jpg" for j in range(1500)]
    uris += [f"/synthetic/b/img_{j:07d}.jpg" for j in range(1500)]
    return str(root), x, labels, uris


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    return write_clustered(tmp_path_factory.mktemp("emb"))


def write_rows(path, uris: list[str], vectors: list[list[float]], model_ids: list[str]) -> None:
    """One embeddings file with the given rows (other columns filled in)."""
    count = len(uris)
    table = pa.Table.from_pydict(
        {
            "image_uri": uris,
            "embedding": vectors,
            "model_id": model_ids,
            "content_sha256": ["0"] * count,
            "width": [1] * count,
            "height": [1] * count,
            "run_id": ["r"] * count,
        },
        schema=embedding_schema(),
    )
    pq.write_table(table, path)


def test_read_blocks_keep_only_the_selected_model(tmp_path):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    path = str(folder / "embeddings-00000-of-00001.parquet")
    write_rows(path, ["a", "b", "c", "d", "e"], [[float(i)] * 4 for i in range(5)], ["m1", "m2", "m1", "m1", "m2"])

    def rows(block: Block):
        return [(str(u), float(v[0]), block.ds, block.model_id) for u, v in zip(block.uris, block.x, strict=True)]

    with TestPipeline(argv=RUNNER) as p:
        blocks = p | ReadEmbeddings([path], "m1", dim=4, block_rows=2)
        kept = blocks | "Rows" >> beam.FlatMap(rows)
        assert_that(
            kept,
            equal_to([("a", 0.0, "2026-11-20", "m1"), ("c", 2.0, "2026-11-20", "m1"), ("d", 3.0, "2026-11-20", "m1")]),
        )


def test_rows_of_different_length_inside_one_file_are_refused(tmp_path):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    path = str(folder / "embeddings-00000-of-00001.parquet")
    write_rows(path, ["a", "b", "c"], [[0.5] * 16, [0.5] * 16, [0.5] * 12], ["m"] * 3)
    with pytest.raises(Exception, match=r"embedding lengths 12\.\.16, expected 16"), TestPipeline(argv=RUNNER) as p:
        _ = p | ReadEmbeddings([path], "m", dim=16, block_rows=8)


@pytest.mark.slow  # scikit-learn's covariance_eigh PCA: seconds, not a full SVD's minute at 3000 x 2048
def test_read_and_fit_pca_transforms_match_scikit_learn(clustered):
    root, x, _, _ = clustered
    summary = inspect_inputs([root + "/ds=*"])
    ref = PCA(n_components=2, svd_solver="covariance_eigh").fit(x.astype(np.float64))

    def check(models):
        (model,) = models
        assert model.n_rows == 3000
        for axis in range(2):
            cos = abs(float(model.components[axis] @ ref.components_[axis]))
            assert cos >= 0.9999, f"component {axis}: |cos| = {cos}"

    def check_blocks(blocks):
        assert sum(len(b.uris) for b in blocks) == 3000
        assert max(len(b.uris) for b in blocks) <= 512
        assert {b.ds for b in blocks} == {"2026-11-19", "2026-11-20"}

    with TestPipeline(argv=RUNNER) as p:
        blocks = p | "Read" >> ReadEmbeddings(summary.files, summary.model_id, summary.dim, block_rows=512)
        # Typed, so Beam picks BlockCoder (not pickle) wherever blocks are encoded or sized.
        assert blocks.element_type is Block
        assert isinstance(coders.registry.get_coder(blocks.element_type), BlockCoder)
        assert_that(blocks, check_blocks, label="Blocks")
        assert_that(blocks | FitPCA(2), check, label="Model")


# --------------------------------------------------------------------------- rows the method needs


def good_partition(base, rows: int = 6, files: int = 2) -> list[str]:
    x = np.random.default_rng(0).normal(size=(rows, 16)).astype(np.float32)
    return write_embeddings(str(base / "ds=2026-11-20"), x, "m", files=files)


@pytest.mark.parametrize(
    ("method", "rows", "refused"),
    [("pca", 1, True), ("pca", 2, False), ("umap", 2, True), ("umap", 3, True), ("umap", 4, False)],
)
def test_require_rows_refuses_fewer_rows_than_the_method_needs(tmp_path, method, rows, refused):
    good_partition(tmp_path, rows=rows, files=1)
    summary = inspect_inputs([str(tmp_path / "ds=2026-11-20")])
    if refused:
        need = MIN_FIT_ROWS[method]
        with pytest.raises(InputError, match=rf"too few rows for {method}: the input holds {rows} row\(s\) .*{need}"):
            require_rows(summary, method, fit_sample_size=20_000)
    else:
        require_rows(summary, method, fit_sample_size=20_000)


def test_require_rows_refuses_a_umap_fit_sample_below_the_minimum(clustered):
    root, *_ = clustered
    summary = inspect_inputs([root + "/ds=*"])
    with pytest.raises(ConfigError, match="--fit_sample_size must be >= 4"):
        require_rows(summary, "umap", fit_sample_size=3)
    require_rows(summary, "umap", fit_sample_size=4)
    require_rows(summary, "pca", fit_sample_size=3)  # PCA fits on every row


def test_drop_non_finite_keeps_finite_rows_and_names_the_others():
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    x[4, 3] = -np.inf
    uris = np.array([f"/img/{i}.jpg" for i in range(6)], dtype=object)
    kept_uris, kept_x, dropped = drop_non_finite(uris, x)
    assert list(kept_uris) == ["/img/0.jpg", "/img/2.jpg", "/img/5.jpg"]
    np.testing.assert_array_equal(kept_x, x[[0, 2, 5]])
    assert dropped == DroppedRows(3, ("/img/1.jpg", "/img/3.jpg", "/img/4.jpg"))
    same_uris, _, none = drop_non_finite(uris[[0, 2]], x[[0, 2]])
    assert none is None
    assert len(same_uris) == 2


def test_dropped_rows_combine_to_the_total_and_the_smallest_examples():
    fn = DroppedRowsFn()
    parts = [DroppedRows(4, ("/c", "/d", "/e", "/f")), DroppedRows(3, ("/a", "/g", "/h")), DroppedRows(1, ("/b",))]
    accs = [fn.add_input(fn.create_accumulator(), part) for part in parts]
    for order in (accs, accs[::-1]):
        assert fn.extract_output(fn.merge_accumulators(order)) == DroppedRows(8, ("/a", "/b", "/c", "/d", "/e"))
    assert fn.extract_output(fn.create_accumulator()) == DroppedRows(0, ())


def test_read_embeddings_leaves_out_rows_with_nan_or_inf_and_reports_them(tmp_path):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    path = str(folder / "embeddings-00000-of-00001.parquet")
    vectors = [[float(i)] * 16 for i in range(8)]
    vectors[1][0] = float("nan")
    vectors[2][3] = float("inf")
    vectors[5][1] = float("-inf")
    vectors[6][2] = None  # a null inside a vector: NaN once read
    write_rows(path, [f"/img/{i}.jpg" for i in range(8)], vectors, ["m"] * 7 + ["other"])

    def rows(block: Block):
        assert np.isfinite(block.x).all()
        return [str(u) for u in block.uris]

    finite = ["/img/0.jpg", "/img/3.jpg", "/img/4.jpg"]
    with TestPipeline(argv=RUNNER) as p:
        blocks, dropped = p | "Report" >> ReadEmbeddings([path], "m", dim=16, block_rows=3, report_dropped=True)
        assert blocks.element_type is Block
        assert_that(blocks | "Rows" >> beam.FlatMap(rows), equal_to(finite))
        want = DroppedRows(4, ("/img/1.jpg", "/img/2.jpg", "/img/5.jpg", "/img/6.jpg"))
        assert_that(dropped, equal_to([want]), label="Dropped")


@pytest.mark.slow  # 4-6 s on 2 busy cores (two reads, four checks)
def test_read_embeddings_without_reporting_and_on_clean_input(tmp_path):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    path = str(folder / "embeddings-00000-of-00001.parquet")
    vectors = [[float(i)] * 16 for i in range(4)]
    vectors[1][0] = float("nan")
    write_rows(path, [f"/img/{i}.jpg" for i in range(4)], vectors, ["m"] * 4)
    clean = good_partition(tmp_path / "clean", rows=5, files=1)
    with TestPipeline(argv=RUNNER) as p:
        # Without reporting (the fit's read): the same rows are left out, and the output is the blocks alone.
        silent = p | "Silent" >> ReadEmbeddings([path], "m", dim=16, block_rows=3)
        uris = silent | "SilentRows" >> beam.FlatMap(lambda b: [str(u) for u in b.uris])
        assert_that(uris, equal_to(["/img/0.jpg", "/img/2.jpg", "/img/3.jpg"]), label="SilentBlocks")
        # Clean input: one DroppedRows of 0, every row kept.
        clean_blocks, none = p | "Clean" >> ReadEmbeddings(clean, "m", dim=16, block_rows=2, report_dropped=True)
        assert_that(none, equal_to([DroppedRows(0, ())]), label="NoneDropped")
        kept = clean_blocks | beam.Map(lambda b: len(b.uris)) | beam.CombineGlobally(sum)
        assert_that(kept, equal_to([5]), label="CleanRows")
