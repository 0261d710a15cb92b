"""The morning report (beam_jobs.report, issue 32) on real Parquet partitions with real image files at the URIs.

Nights are synthetic clustered vectors (scripts/bench_report.py's ``World``: 13 clusters, the 13th held back as
the "new" kind) written as extraction output; every row's URI is a real JPEG (a hard link to one of four crops
of the cluster's own sample photo, devtools/samples.py's sources), so thumbnails are read as in production.
The scenario tests run the report as the command does, in this process (the one subprocess test checks the
exit status and the one line of a refusal).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from beam_jobs.contract import (
    DUPLICATE_COLUMNS,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_PNG,
    REPORT_SECTIONS,
    ReportJson,
    reports_dir,
)
from scripts.bench_report import World, night_labels, planted_label, write_night
from tests.conftest import ROOT

DS = "2026-11-20"
DIM = 128
ROWS = 1500
WINDOW = 7
NEW = 12  # the cluster no earlier night has
CROPS = 4
FAST = ["--threads", "1", "--window_sample", "8000", "--thumbnail_time_budget_s", "30"]


def cluster_photos(folder: str) -> dict[int, list[str]]:
    """Four small JPEG crops per cluster, each cluster from its own sample photo."""
    from devtools.samples import load_sources

    sources = load_sources()
    rng = np.random.default_rng(5)
    out: dict[int, list[str]] = {}
    for cluster in range(13):
        src = sources[cluster % len(sources)]
        os.makedirs(folder, exist_ok=True)
        out[cluster] = []
        for i in range(CROPS):
            w, h = src.size
            cw, ch = int(w * 0.6), int(h * 0.6)
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            path = os.path.join(folder, f"c{cluster:02d}-{i}.jpg")
            src.crop((left, top, left + cw, top + ch)).resize((200, 150)).save(path, "JPEG", quality=80)
            out[cluster].append(path)
    return out


def earlier(ds: str, back: int) -> str:
    return (dt.date.fromisoformat(ds) - dt.timedelta(days=back)).isoformat()


def build_nights(root: str, tonight_weights: np.ndarray, *, seed: int = 0, window: int = WINDOW) -> str:
    """``window`` earlier nights of the 12 usual clusters and tonight drawn with ``tonight_weights`` (13 weights),
    written as extraction output under ``root``, each row's URI a real image file. Returns ``root``."""
    world = World.make(dim=DIM, clusters=13, seed=0)
    photos = cluster_photos(os.path.join(root, "photos"))

    def uri(ds: str, label: int, i: int) -> str:
        return os.path.join(root, "images", f"ds={ds}", f"c{label:02d}", f"img_{i:07d}.jpg")

    usual = np.r_[np.ones(12), 0.0]
    nights = [(earlier(DS, back), usual, seed * 100 + back) for back in range(window, 0, -1)]
    for ds, weights, night_seed in [*nights, (DS, tonight_weights, seed * 100 + 50)]:
        labels = night_labels(ROWS, weights, night_seed)
        write_night(os.path.join(root, "embeddings", f"ds={ds}"), world, labels, ds, night_seed, uri=uri)
        for i, label in enumerate(labels):
            path = uri(ds, int(label), i)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.link(photos[int(label)][i % CROPS], path)
    return root


def make_report(root: str, *args: str) -> ReportJson:
    from beam_jobs.report.job import run

    return run(["--output_root", root, "--ds", DS, "--run_id", "test", *FAST, *args])


def labels_of(uris: list[str]) -> Counter:
    return Counter(planted_label(u) for u in uris)


def planted_weights(share: float = 0.07) -> np.ndarray:
    return np.r_[np.ones(12) * (1 - share) / 12, share]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[str, ReportJson]:
    """Tonight adds a new cluster of 7% of its rows; nothing else is there (no index, maps, reference, runs)."""
    root = build_nights(str(tmp_path_factory.mktemp("planted")), planted_weights())
    return root, make_report(root)


# --------------------------------------------------------------------------- the three planted checks


@pytest.mark.slow
def test_planted_novelty_is_found(planted):
    _root, report = planted
    shown = [item["image_uri"] for item in report["new_tonight"]]
    assert len(shown) == 24
    assert labels_of(shown)[NEW] / len(shown) >= 0.8, labels_of(shown)
    scores = [item["score"] for item in report["new_tonight"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["nearest_ds"] < DS for item in report["new_tonight"])  # against earlier nights only
    novelty = report["novelty"]
    assert novelty["status"] == "above"
    assert novelty["rate"] > novelty["band"][1]
    assert 0.05 <= novelty["rate"] <= 0.12  # ~1% usual + the planted 7%
    assert novelty["window_rows"] == WINDOW * ROWS
    assert novelty["sample_rows"] + novelty["held_out_rows"] <= novelty["window_rows"]
    assert novelty["check"]["top_k_overlap"] >= 0.8
    # The new kind is also the first mover of section 3: from ~0% of the window to ~7% of tonight.
    first = report["clusters"][0]
    assert first["share_window"] < 0.01 < 0.05 < first["share_tonight"]
    assert labels_of(first["examples"])[NEW] == len(first["examples"]) == 6


@pytest.mark.slow
def test_the_inverted_file_search_finds_the_planted_novelty_too(planted, tmp_path, monkeypatch):
    """Large samples are searched with IVF (the tests' windows are small: force it)."""
    from beam_jobs.report import novelty

    monkeypatch.setattr(novelty, "IVF_FROM", 1000)
    report = make_report(planted[0], "--output", str(tmp_path / "ivf"))
    novelty_figures = report["novelty"]
    assert novelty_figures["index"] == "ivf"
    assert novelty_figures["nprobe"] >= 8
    assert labels_of([item["image_uri"] for item in report["new_tonight"]])[NEW] >= 20
    assert novelty_figures["status"] == "above"
    assert novelty_figures["check"]["index_nearest_share"] >= 0.9
    assert abs(novelty_figures["rate"] - planted[1]["novelty"]["rate"]) < 0.01


@pytest.mark.slow
def test_a_null_night_stays_within_its_usual_band(tmp_path):
    root = build_nights(str(tmp_path), np.r_[np.ones(12), 0.0], seed=1)
    novelty = make_report(root)["novelty"]
    low, high = novelty["band"]
    assert low <= novelty["rate"] <= high, novelty
    assert novelty["status"] == "within"
    assert len(novelty["per_night"]) == WINDOW


@pytest.mark.slow
def test_a_cluster_that_doubled_is_the_first_mover(tmp_path):
    weights = np.r_[np.ones(12), 0.0]
    weights[3] = 2.0  # 1/12 of the rows in the window, 2/13 tonight
    report = make_report(build_nights(str(tmp_path), weights, seed=2))
    first = report["clusters"][0]
    assert first["change"] > 0.04
    assert labels_of(first["examples"])[3] / len(first["examples"]) >= 0.8, first
    assert first["share_tonight"] / first["share_window"] > 1.5
    changes = [abs(c["change"]) for c in report["clusters"]]
    assert changes == sorted(changes, reverse=True)
    assert sum(c["share_tonight"] for c in report["clusters"]) == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------- missing inputs, files, page


@pytest.mark.slow
def test_a_night_without_index_maps_or_reference_still_reports_saying_why(planted):
    root, report = planted
    folder = reports_dir(root, DS)
    assert sorted(os.listdir(folder)) == sorted([REPORT_HTML, REPORT_JSON, REPORT_PNG])
    sections = report["sections"]
    assert set(sections) == set(REPORT_SECTIONS)
    assert sections["numbers"] is None
    assert sections["new_tonight"] is None
    assert sections["clusters"] is None
    assert "no projection" in sections["drift"]
    assert "no index" in sections["duplicates"]
    assert "one model tonight" in sections["models"]
    assert "no maps and no index" in sections["links"]
    with open(os.path.join(folder, REPORT_HTML), encoding="utf-8") as handle:
        page = handle.read()
    for why in (sections["drift"], sections["duplicates"], sections["links"]):
        assert why.replace("'", "&#x27;") in page
    with open(os.path.join(folder, REPORT_JSON)) as handle:
        assert json.load(handle)["new_tonight"] == report["new_tonight"]


@pytest.mark.slow
def test_the_page_is_one_offline_file_under_the_maps_csp(planted):
    root, report = planted
    with open(os.path.join(reports_dir(root, DS), REPORT_HTML), encoding="utf-8") as handle:
        page = handle.read()
    assert report["html_bytes"] == len(page.encode("utf-8")) < 5_000_000
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert sources
    assert all(s.startswith("data:image/") for s in sources)
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page
    assert "<link" not in page
    assert "@import" not in page
    # Every shown novel image has its thumbnail (real files at the URIs).
    assert report["thumbnails"]["shown"] >= len(report["new_tonight"]) + 6
    assert report["thumbnails"]["misses"] == {"unreadable": 0, "timeout": 0, "time_budget": 0}
    with Image.open(os.path.join(reports_dir(root, DS), REPORT_PNG)) as img:
        assert img.size == (1200, 675)
        right = np.asarray(img.convert("L").crop((500, 130, 1190, 620)))
        assert (right < 235).mean() > 0.5  # the novel images' thumbnails fill the right side


@pytest.mark.slow
def test_the_page_keeps_to_its_size_budget(planted, tmp_path):
    root, _ = planted
    out = str(tmp_path / "small")
    report = make_report(root, "--output", out, "--max_html_mb", "0.2")
    assert report["html_bytes"] <= 200_000
    assert 0 < report["thumbnails"]["shown"] < report["thumbnails"]["wanted"]


@pytest.mark.slow
def test_optional_inputs_fill_their_sections(planted, tmp_path):
    import shutil

    root = str(tmp_path / "root")  # the same nights (their URIs still point at the planted folder's images)
    shutil.copytree(os.path.join(planted[0], "embeddings"), os.path.join(root, "embeddings"))
    new = [item["image_uri"] for item in planted[1]["new_tonight"]]
    write_optional_inputs(root, new)
    report = make_report(root)
    sections = report["sections"]
    assert {k: v for k, v in sections.items() if v} == {}
    exact, near = report["duplicates"]["exact"], report["duplicates"]["near"]
    assert exact[0]["size"] == 3
    assert near[0]["size"] == 2
    assert report["models"][0]["linear_cka"] == 0.8
    assert report["drift"]["pca"]["drift"]["mmd_p_value"] == 0.005
    assert set(report["links"]) == {"map (pca)", "explorer (pca)", "search (index)"}
    figures = {f["name"]: f for f in report["numbers"]}
    assert figures["usd"]["value"] == 0.5
    assert figures["usd"]["median"] == 0.25
    assert figures["usd"]["nights"] == 2
    assert figures["inputs"]["nights"] == WINDOW
    assert figures["inputs"]["median"] == ROWS
    with open(os.path.join(reports_dir(root, DS), REPORT_HTML), encoding="utf-8") as handle:
        page = handle.read()
    assert 'href="../../projections/method=pca/ds=2026-11-20/map.html"' in page


def write_optional_inputs(root: str, new: list[str]) -> None:
    """What the other jobs leave for the night: an index with duplicates, a map drawn in a saved reference with
    drift, a comparison, tonight's and two earlier run records (in the contract's shapes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.contract import comparisons_dir, index_dir, projections_dir, references_dir, run_record_path
    from beam_jobs.storage import arrow_schema

    def dump(path: str, obj: dict) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            json.dump(obj, handle)

    model_id = "synthetic/resnet50-like/dim=128"
    index = index_dir(root, DS)
    dump(os.path.join(index, "manifest.json"), {"model_id": model_id, "rows": ROWS * 8, "near_duplicate_pairs": 1})
    rows = [("exact", new[0], new[1], DS, 1.0), ("exact", new[2], new[1], DS, 1.0), ("near", new[3], new[4], DS, 0.97)]
    columns = list(zip(*rows, strict=True))
    schema = arrow_schema(DUPLICATE_COLUMNS)
    table = pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema)
    pq.write_table(table, os.path.join(index, "duplicates.parquet"))
    reference = references_dir(root, "pca", "fixed")
    dump(os.path.join(reference, "reference.json"), {"format": "image-embeddings-reducer", "run_id": "r"})
    projection = projections_dir(root, "pca", DS)
    drift = {"mean_shift_relative": 0.3, "mmd_p_value": 0.005, "novelty_rate": 0.07}
    dump(
        os.path.join(projection, "manifest.json"),
        {"model_id": model_id, "method": "pca", "reference": {"dir": reference, "mode": "loaded"}, "drift": drift},
    )
    for name in ("map.png", "map.html"):
        with open(os.path.join(projection, name), "w") as handle:
            handle.write("x")
    pair = {"models": ["a", "b"], "images": 100, "k": 10, "knn_overlap": {"mean": 0.6}, "distance_spearman": 0.7}
    dump(os.path.join(comparisons_dir(root, DS), "comparison.json"), {"comparisons": [{**pair, "linear_cka": 0.8}]})
    for ds, usd in ((DS, 0.5), (earlier(DS, 1), 0.2), (earlier(DS, 2), 0.3)):
        dump(run_record_path(root, ds), {"ds": ds, "embeddings": {"seconds": 10.0}, "cost": {"usd": usd}})


def test_a_night_whose_extraction_failed_still_reports(tmp_path):
    """Failures only: every input failed, the commit step kept one empty embeddings file."""
    import pyarrow.parquet as pq

    from beam_jobs.contract import EMBEDDING_COLUMNS
    from beam_jobs.storage import arrow_schema

    root = str(tmp_path)
    folder = os.path.join(root, "embeddings", f"ds={DS}")
    os.makedirs(folder)
    pq.write_table(
        arrow_schema(EMBEDDING_COLUMNS).empty_table(), os.path.join(folder, "embeddings-00000-of-00001.parquet")
    )
    reasons = ["read/not_found"] * 5 + ["decode/not_an_image"] * 2
    with open(os.path.join(folder, "failures-decode-00000-of-00001.jsonl"), "w") as handle:
        for i, reason in enumerate(reasons):
            stage, error = reason.split("/")
            record = {"image_uri": f"/in/img_{i}.jpg", "stage": stage, "error": error, "message": "m", "run_id": "r"}
            handle.write(json.dumps(record) + "\n")
    manifest = {"inputs": 7, "embedded": 0, "failed": 7, "model_id": "m1", "seconds": 3.0,
                "failures_by_reason": {"read/not_found": 5, "decode/not_an_image": 2}}  # fmt: skip
    with open(os.path.join(folder, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    report = make_report(root)
    assert report["failures"][0] == {
        "reason": "read/not_found",
        "count": 5,
        "examples": ["/in/img_0.jpg", "/in/img_1.jpg", "/in/img_2.jpg"],
    }
    assert report["failures"][1]["count"] == 2
    assert report["sections"]["numbers"] is None
    assert "no embeddings of m1 tonight (0 of 7 inputs embedded" in report["sections"]["new_tonight"]
    assert report["sections"]["clusters"] == report["sections"]["new_tonight"]
    assert report["new_tonight"] == []
    assert report["clusters"] == []
    figures = {f["name"]: f["value"] for f in report["numbers"]}
    assert figures["failed"] == 7
    assert figures["failure_rate"] == 1.0
    for name in (REPORT_HTML, REPORT_PNG, REPORT_JSON):
        assert os.path.getsize(os.path.join(reports_dir(root, DS), name)) > 0


def test_the_first_night_reports_without_a_window(tmp_path):
    root = str(tmp_path)
    world = World.make(dim=16, clusters=3, seed=0, rank=8)
    write_night(os.path.join(root, "embeddings", f"ds={DS}"), world, night_labels(50, np.ones(3), 0), DS, 0)
    report = make_report(root)
    assert "no earlier night of synthetic/resnet50-like/dim=16 within the 7 day(s)" in report["sections"]["new_tonight"]
    assert report["window_nights"] == []
    assert report["novelty"] == {}


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output_root", "/tmp/r", "--ds", "2026-13-01"], "--ds must be a date YYYY-MM-DD, got '2026-13-01'"),
        (["--ds", DS], "the following arguments are required: --output_root"),
        (["--output_root", "/tmp/r", "--ds", DS, "--window_days", "0"], "--window_days must be between 1 and 366"),
        (["--output_root", "/", "--ds", DS], "--output_root '/' must name a folder below the root"),
        (["--output_root", "/tmp/nothing-here", "--ds", DS], "no extraction output for ds=2026-11-20"),
        (["--output_root", "/tmp/r", "--ds", DS, "--top_k", "x"], "argument --top_k: invalid int value: 'x'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, caplog):
    from beam_jobs.report.__main__ import main

    caplog.set_level(logging.ERROR)
    assert main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    assert message in errors[0]


def test_a_model_the_night_does_not_hold_is_refused(tmp_path, caplog):
    from beam_jobs.report.__main__ import main

    root = str(tmp_path)
    world = World.make(dim=16, clusters=3, seed=0, rank=8)
    write_night(os.path.join(root, "embeddings", f"ds={DS}"), world, night_labels(30, np.ones(3), 0), DS, 0)
    assert main(["--output_root", root, "--ds", DS, "--model_id", "other"]) == 2
    assert "--model_id 'other' is not a model of ds=2026-11-20" in caplog.text
    assert not os.path.exists(reports_dir(root, DS))


@pytest.mark.slow  # one launch: the command-line contract as a user (or the operator) sees it
def test_the_command_refuses_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "beam_jobs.report", "--output_root", "/tmp/r", "--ds", "20261120"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "--ds must be a date YYYY-MM-DD" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_report_step_summarises_and_never_raises_for_missing_optional_inputs(tmp_path):
    from beam_jobs.report import report_step

    root = str(tmp_path)
    world = World.make(dim=16, clusters=3, seed=0, rank=8)
    for back in (2, 1, 0):
        ds = earlier(DS, back) if back else DS
        write_night(os.path.join(root, "embeddings", f"ds={ds}"), world, night_labels(300, np.ones(3), back), ds, back)
    summary = report_step(root, DS, None, 7, "scheduled__x")
    assert summary["dir"] == reports_dir(root, DS)
    assert summary["html"].endswith(REPORT_HTML)
    assert os.path.exists(summary["png"])
    assert set(summary["sections_missing"]) == {"drift", "duplicates", "models", "links"}
    assert summary["novelty_status"] in ("within", "above", "below")
    with open(summary["json"]) as handle:
        assert json.load(handle)["run_id"] == "scheduled__x"


# --------------------------------------------------------------------------- pieces


def test_duplicate_groups_join_pairs_and_come_largest_first():
    from beam_jobs.report.inputs import _groups

    groups = _groups([("a", "b", 0.99), ("c", "b", 0.96), ("x", "y", 0.98)], "near")
    assert [(g["size"], g["image_uris"], g["score"]) for g in groups] == [
        (3, ["a", "b", "c"], 0.96),
        (2, ["x", "y"], 0.98),
    ]


def test_the_band_reflects_the_nights_spread():
    from beam_jobs.report.novelty import SampleIndex, calibrate

    rng = np.random.default_rng(0)
    sample = rng.normal(size=(2800, 8)).astype(np.float32)
    held = rng.normal(size=(2800, 8)).astype(np.float32)
    nights = np.repeat([f"2026-11-1{i}" for i in range(7)], 400).astype(object)
    calibration = calibrate(sample, nights, held, nights, SampleIndex(sample))
    assert calibration.threshold > 0
    assert len(calibration.per_night) == 7
    low, high = calibration.band
    assert low <= 0.01 <= high
    assert high < 0.05
    assert calibration.status(0.08) == "above"
    assert calibration.status(0.01) == "within"


def test_the_config_derives_its_output_and_declares_its_flags():
    from beam_jobs.report.config import ReportConfig

    cfg, rest = ReportConfig.parse(["--output_root", "gs://b/out", "--ds", DS, "--runner", "x"])
    assert cfg.output == "gs://b/out/reports/ds=2026-11-20"
    assert rest == ["--runner", "x"]
    assert (cfg.window_days, cfg.top_k) == (7, 24)
    help_text = ReportConfig.arg_parser().format_help()
    for flag in ("--output_root", "--ds", "--model_id", "--window_days", "--top_k", "--window_sample"):
        assert flag in help_text
