"""beam_jobs.reduce_dim.fit: FitPCA, FitUMAP, the seeded sample and Project as Beam stages, on tiny data."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.partitions import NO_PARTITION
from beam_jobs.reduce_dim.fit import FitPCA, FitUMAP, Project, SampleFn, SideModel, check_fit_rows, describe_model
from beam_jobs.reduce_dim.records import Block, Projected
from beam_jobs.reduce_dim.reduction import GramStats, Sample, fit_pca, row_priority
from beam_jobs.runtime import InputError
from devtools.synthetic import clustered_embeddings

RUNNER = ["--runner=FnApiRunner"]


def blocks_of(x: np.ndarray, rows_per_block: int, ds: str | None = "2026-11-20") -> list[Block]:
    uris = np.array([f"/img/{i:05d}.jpg" for i in range(len(x))], dtype=object)
    return [
        Block(uris[i : i + rows_per_block], x[i : i + rows_per_block], ds, "m")
        for i in range(0, len(x), rows_per_block)
    ]


def test_fit_pca_stage_equals_one_fit_over_all_rows():
    x = np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
    want = fit_pca(GramStats().add_block(x), 2)

    def check(models):
        (model,) = models
        assert model.n_rows == 120
        # Blocks' Gram matrices are float32 (summed in float64): equal to float32 precision, same signs.
        np.testing.assert_allclose(model.components, want.components, atol=1e-5)
        np.testing.assert_allclose(model.explained_variance_ratio, want.explained_variance_ratio, rtol=1e-5)

    with TestPipeline(argv=RUNNER) as p:
        blocks = p | beam.Create(blocks_of(x, 25)).with_output_types(Block)
        assert_that(blocks | FitPCA(2), check)


def test_sample_stage_keeps_the_rows_with_the_smallest_hash():
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    blocks = blocks_of(x, 7, ds=None)
    uris = np.concatenate([b.uris for b in blocks])
    want = Sample(5).add(row_priority(uris, 3), image_uri=uris).sorted().columns["image_uri"]

    def check(samples):
        (sample,) = samples
        assert list(sample.columns["image_uri"]) == list(want)
        assert set(sample.columns["ds"]) == {NO_PARTITION}
        rows = [int(u[5:10]) for u in sample.columns["image_uri"]]
        np.testing.assert_array_equal(sample.columns["x"], x[rows])

    with TestPipeline(argv=RUNNER) as p:
        sample = p | beam.Create(blocks).with_output_types(Block) | beam.CombineGlobally(SampleFn(5, 3, ("x",)))
        assert_that(sample, check)


def test_project_stage_applies_the_fitted_model_to_every_block():
    x = np.random.default_rng(1).normal(size=(30, 6)).astype(np.float32)
    model = fit_pca(GramStats().add_block(x), 2)
    want = model.transform(x)

    def rows(item: Projected):
        assert item.x.shape == (len(item.uris), 6)
        return [(str(u), round(float(a), 5), round(float(b), 5)) for u, (a, b) in zip(item.uris, item.xy, strict=True)]

    with TestPipeline(argv=RUNNER) as p:
        fitted = p | "Model" >> beam.Create([model])
        projected = p | beam.Create(blocks_of(x, 8)).with_output_types(Block) | Project(fitted)
        expected = [(f"/img/{i:05d}.jpg", round(float(a), 5), round(float(b), 5)) for i, (a, b) in enumerate(want)]
        assert_that(projected | beam.FlatMap(rows), equal_to(expected))


def test_side_model_is_weighed_by_its_arrays():
    model = fit_pca(GramStats().add_block(np.eye(4, dtype=np.float32)), 2)
    referents = SideModel(model).get_referents_for_cache()
    assert referents
    assert all(isinstance(r, np.ndarray) for r in referents)


def test_describe_pca_model():
    x = np.random.default_rng(2).normal(size=(50, 5)).astype(np.float32)
    info = describe_model(fit_pca(GramStats().add_block(x), 2))
    assert set(info) == {"explained_variance_ratio", "explained_variance", "fit_rows"}
    assert info["fit_rows"] == 50
    assert len(info["explained_variance_ratio"]) == 2


@pytest.mark.slow
def test_fit_umap_stage_fits_on_the_seeded_sample(tmp_path):
    """Also: the fitted UMAP saved as a reference (pickled, sha256-checked) transforms as before once loaded."""
    from beam_jobs.reduce_dim.drift import Moments, build_drift_space
    from beam_jobs.reduce_dim.reference import load_reference, save_reference

    x, _ = clustered_embeddings(400, 64, clusters=3, seed=4)

    def check(models):
        (model,) = models
        assert model.fit_rows == 300
        info = describe_model(model)
        assert info["fit_rows"] == 300
        assert info["pca_dims"] == 10
        assert info["n_neighbors"] == 15
        assert 0 < info["pca_explained_variance_ratio_total"] <= 1
        assert model.transform(x[:5]).shape == (5, 2)
        folder = str(tmp_path / "umap-ref")
        provenance = {"method": "umap", "model_id": "m", "embedding_dim": 64, "partitions": [], "seed": 0}
        save_reference(folder, model, build_drift_space(x[:100], Moments().add(x)), model.transform(x[:50]), provenance)
        loaded = load_reference(folder)
        assert loaded.info["files"].keys() >= {"umap.pkl", "pre_pca.npz"}
        np.testing.assert_array_equal(loaded.model.transform(x[:20]), model.transform(x[:20]))

    with TestPipeline(argv=RUNNER) as p:
        blocks = p | beam.Create(blocks_of(x, 64)).with_output_types(Block)
        assert_that(blocks | FitUMAP(300, seed=0, pca_dims=10, n_neighbors=15, min_dist=0.1), check)


# --------------------------------------------------------------------------- too few rows left after NaN/inf


def test_check_fit_rows_names_the_counts():
    check_fit_rows("pca", 2, 10)
    check_fit_rows("umap", 4, None)
    with pytest.raises(InputError, match=r"^no rows left to fit pca: all 7 input row\(s\) .*NaN or inf.* least 2$"):
        check_fit_rows("pca", 0, 7)
    with pytest.raises(InputError, match=r"too few rows left to fit umap: 9 of 12 .* NaN or inf values, 3 left; .* 4"):
        check_fit_rows("umap", 3, 12)
    with pytest.raises(InputError, match=r"^too few rows to fit pca: 1; pca needs at least 2$"):
        check_fit_rows("pca", 1, None)


def test_fit_pca_stage_refuses_when_nan_rows_leave_too_few():
    x = np.ones((1, 4), np.float32)  # what ReadEmbeddings passed on: 1 finite row of 5
    p = TestPipeline(argv=RUNNER)
    _ = p | beam.Create(blocks_of(x, 8)).with_output_types(Block) | FitPCA(2, input_rows=5)
    with pytest.raises(InputError, match=r"too few rows left to fit pca: 4 of 5 input row\(s\) .* 1 left"):
        p.run()


def test_fit_umap_stage_refuses_when_no_rows_are_left():
    # Refused before the pre-PCA or umap-learn: no numba compilation, fast.
    p = TestPipeline(argv=RUNNER)
    blocks = p | beam.Create([]).with_output_types(Block)
    _ = blocks | FitUMAP(100, seed=0, pca_dims=2, n_neighbors=15, min_dist=0.1, input_rows=3)
    with pytest.raises(InputError, match=r"no rows left to fit umap: all 3 input row\(s\) of the model have NaN"):
        p.run()
