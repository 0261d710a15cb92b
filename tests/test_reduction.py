"""beam_jobs.reduce_dim.reduction: PCA statistics and scikit-learn, seeded sampling, trustworthiness, UMAP."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from beam_jobs.reduce_dim.reduction import (
    MIN_FIT_ROWS,
    PCA_MIN_ROWS,
    UMAP_MIN_ROWS,
    GramStats,
    Sample,
    fit_pca,
    fit_umap,
    row_priority,
    trustworthiness,
)
from devtools.synthetic import clustered_embeddings


def test_gram_stats_merge_is_exact_whatever_the_split():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(900, 64)) * 3 + 100).astype(np.float32)
    whole = GramStats().add_block(x)
    parts = [GramStats().add_block(x[:100]), GramStats().add_block(x[100:650]).add_block(x[650:]), GramStats()]
    merged = parts[2].merge(parts[1]).merge(parts[0])
    assert merged.n_rows == whole.n_rows == 900
    np.testing.assert_allclose(merged.mean(), x.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(merged.covariance(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(whole.covariance(), merged.covariance(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # scikit-learn's full SVD; 512-d keeps it to seconds (the numerics do not depend on the width)
def test_pca_matches_scikit_learn_per_axis():
    x, _ = clustered_embeddings(3000, 512, clusters=8, seed=5)
    stats = GramStats()
    for block in np.array_split(x, 7):
        stats.add_block(block)
    ours = fit_pca(stats, 2)
    ref = PCA(n_components=2, svd_solver="full").fit(x.astype(np.float64))
    a, b = ours.transform(x), ref.transform(x.astype(np.float64))
    for axis in range(2):
        assert abs(np.corrcoef(a[:, axis], b[:, axis])[0, 1]) >= 0.9999
    np.testing.assert_allclose(ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-3)
    # Same sign convention as scikit-learn: the largest loading of each component is positive.
    assert np.all(ours.components[np.arange(2), np.argmax(np.abs(ours.components), axis=1)] > 0)


def test_sample_does_not_depend_on_order_or_split():
    uris = np.array([f"u{i}" for i in range(500)], dtype=object)
    prio = row_priority(uris, seed=3)
    whole = Sample(50).add(prio, image_uri=uris).sorted()
    rng = np.random.default_rng(1)
    perm = rng.permutation(500)
    split = [Sample(50).add(prio[perm[i::4]], image_uri=uris[perm[i::4]]) for i in range(4)]
    merged = split[3].merge(split[1]).merge(split[0]).merge(split[2]).sorted()
    assert list(merged.columns["image_uri"]) == list(whole.columns["image_uri"])
    assert len(Sample(10_000).add(prio, image_uri=uris)) == 500  # larger than the data: all rows
    assert not np.array_equal(row_priority(uris, 3), row_priority(uris, 4))


@pytest.mark.parametrize(("n", "dim", "noise"), [(600, 2048, 0.5), (200, 64, 3.0), (9, 4, 0.1), (3, 3, 0.0)])
def test_trustworthiness_equals_scikit_learn(n, dim, noise):
    from sklearn.manifold import trustworthiness as sklearn_trustworthiness

    rng = np.random.default_rng(n)
    if dim >= 64:
        x = clustered_embeddings(n, dim, clusters=4, seed=n)[0]
    else:
        x = rng.normal(size=(n, dim)).astype(np.float32)
    low = (x[:, :2] + rng.normal(scale=noise, size=(n, 2))).astype(np.float32)
    ours = trustworthiness(x, low)
    if n // 2 - 1 < 1:
        assert ours is None  # too few rows for a neighbourhood
        return
    k = min(10, n // 2 - 1)
    expected = sklearn_trustworthiness(x.astype(np.float64), low.astype(np.float64), n_neighbors=k)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert 0.0 < ours <= 1.0


@pytest.mark.slow
def test_umap_keeps_clusters_apart_and_neighbourhoods_trustworthy():
    x, labels = clustered_embeddings(2000, 2048, clusters=5, seed=2)
    stats = GramStats().add_block(x)
    model = fit_umap(x[::2], fit_pca(stats, 50), seed=0)
    xy = model.transform(x[1::2])  # rows the model never saw
    lab = labels[1::2]
    assert trustworthiness(x[1::2][:800], xy[:800]) >= 0.9
    centres = np.stack([xy[lab == c].mean(axis=0) for c in range(5)])
    radius = max(np.linalg.norm(xy[lab == c] - centres[c], axis=1).max() for c in range(5))
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i in range(5) for j in range(i + 1, 5)]
    # Nearest-centre assignment recovers every cluster: the clusters stay apart.
    nearest = np.argmin(np.linalg.norm(xy[:, None, :] - centres[None], axis=2), axis=1)
    assert (nearest == lab).mean() == 1.0
    assert min(gaps) > radius


# --------------------------------------------------------------------------- the fewest rows a fit needs


def test_pca_fits_on_its_minimum_rows_and_refuses_fewer():
    x = np.array([[1.0, 2.0, 3.0], [2.0, 0.0, 3.5]], np.float32)
    assert PCA_MIN_ROWS == MIN_FIT_ROWS["pca"] == 2
    model = fit_pca(GramStats().add_block(x), 2)
    assert np.isfinite(model.transform(x)).all()
    with pytest.raises(ValueError, match="PCA needs at least 2 rows, got 1"):
        fit_pca(GramStats().add_block(x[:1]), 2)


def test_umap_refuses_fewer_than_its_minimum_before_importing_umap():
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="UMAP needs at least 4 rows to fit, got 3"):
        fit_umap(x, None, seed=0)


@pytest.mark.slow  # umap-learn's numba compilation: 20-50 s on first use in a process
@pytest.mark.parametrize("n_neighbors", [2, 15])
def test_umap_minimum_is_real(n_neighbors):
    """4 rows fit and transform; on 3, umap-learn itself fails (its spectral layout asks for 3 eigenvectors)."""
    import warnings

    from beam_jobs.reduce_dim.reduction import import_umap

    x, _ = clustered_embeddings(20, 64, clusters=2, seed=1)
    assert UMAP_MIN_ROWS == MIN_FIT_ROWS["umap"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-data warnings of umap-learn
        model = fit_umap(x[:4], None, seed=0, n_neighbors=n_neighbors)
        assert np.isfinite(model.transform(x[4:])).all()
        reducer = import_umap().UMAP(n_components=2, n_neighbors=2, random_state=0, n_jobs=1)
        with pytest.raises(Exception, match="k >= N"):
            reducer.fit(x[:3])
