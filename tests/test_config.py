"""config.py: each flag declared once; parsers generated from the fields; every problem listed before any work."""

from __future__ import annotations

from dataclasses import fields

import pytest

from beam_jobs.config import (
    ConfigError,
    ExtractConfig,
    JobConfig,
    ReduceConfig,
    names_a_root,
)
from beam_jobs.contract import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, ResizeMode


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--output", "/o"], "exactly one of --input"),
        (["--output", "/o", "--input", "a", "--input_manifest", "b"], "exactly one of --input"),
        (["--output", "/o", "--input", "a", "--batch_size", "0"], "--batch_size"),
        (["--output", "/o", "--input", "a", "--num_shards", "-1"], "--num_shards"),
        (["--output", "gs://", "--input", "a"], "--output"),
    ],
)
def test_bad_flags_are_refused_before_anything_runs(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        ExtractConfig.parse(argv)


def test_unknown_flags_go_to_beam():
    cfg, beam_args = ExtractConfig.parse(["--output", "/o", "--input", "x/*", "--runner", "FnApiRunner", "--foo=1"])
    assert cfg.input == "x/*"
    assert beam_args == ["--runner", "FnApiRunner", "--foo=1"]


@pytest.mark.parametrize("config", [ExtractConfig, ReduceConfig])
def test_every_flag_has_help_and_appears_once_in_the_parser(config):
    parser = config.arg_parser()
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"]
    declared = [f for f in fields(config) if "help" in f.metadata]
    assert len(flags) == len(set(flags)) == len(declared)
    assert all(f.metadata["help"] for f in declared)
    # started_at is internal: stamped at construction, never a flag.
    assert "--started_at" not in flags


def test_absent_flags_take_the_fields_own_defaults():
    cfg, _ = ExtractConfig.parse(["--output", "/o", "--input", "x/*"])
    assert cfg.batch_size == DEFAULT_BATCH_SIZE
    assert cfg.resize_mode is ResizeMode.CENTER_CROP
    assert cfg.num_shards == 0
    assert cfg.detach is False
    assert cfg.run_id.startswith("manual__")
    red, _ = ReduceConfig.parse(["--input", "/a", "--output", "/o", "--method", "pca"])
    assert red == ReduceConfig(inputs=("/a",), output="/o", method="pca", run_id=red.run_id, started_at=red.started_at)


def test_flags_are_typed_by_their_field():
    cfg, _ = ExtractConfig.parse(["--output", "/o", "--input", "x", "--resize_mode", "squash", "--batch_size", "7"])
    assert cfg.resize_mode is ResizeMode.SQUASH
    assert cfg.batch_size == 7
    red, _ = ReduceConfig.parse(
        ["--input", "/a", "--output", "/o", "--method", "umap", "--no-thumbnails", "--min_dist", "0.5"]
    )
    assert red.thumbnails is False
    assert red.min_dist == 0.5


def test_choices_are_refused_by_the_parser_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        ExtractConfig.parse(["--output", "/o", "--input", "x", "--resize_mode", "stretch"])
    assert exit_.value.code == 2
    assert "--resize_mode" in capsys.readouterr().err


def test_model_is_a_registry_name_or_a_savedmodel_or_hub_reference():
    with pytest.raises(ConfigError, match=r"--model must be one of resnet50, .*savedmodel:PATH or hub:HANDLE"):
        ExtractConfig.parse(["--output", "/o", "--input", "x", "--model", "vgg99"])
    with pytest.raises(ConfigError, match="--model needs a path or handle after 'savedmodel:'"):
        ExtractConfig.parse(["--output", "/o", "--input", "x", "--model", "savedmodel:"])
    cfg, _ = ExtractConfig.parse(["--output", "/o", "--input", "x", "--model", "savedmodel:/m", "--input_range=-1-1"])
    assert (cfg.model, cfg.input_range) == ("savedmodel:/m", "-1-1")
    with pytest.raises(ConfigError, match="--input_range applies to savedmodel:/hub: models; resnet50 sets its own"):
        ExtractConfig.parse(["--output", "/o", "--input", "x", "--input_range", "0-1"])


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        ExtractConfig(output="gs://", batch_size=MAX_BATCH_SIZE + 1, max_pixels=0, num_shards=-2).validate()
    text = str(err.value)
    for needle in (
        "exactly one of --input",
        "--batch_size must be between 1 and 1024",
        "--max_pixels",
        "--num_shards",
        "--output",
    ):
        assert needle in text
    assert text.count("\n  - ") == 5


def test_a_config_built_in_code_is_checked_like_a_parsed_one():
    with pytest.raises(ConfigError, match="--model must be one of resnet50"):
        ExtractConfig(output="/o", input="x", model="vgg99").validate()
    with pytest.raises(ConfigError, match="--input is required"):
        ReduceConfig(inputs=(" ",), output="/o", method="pca").validate()


def test_roots_are_never_outputs():
    for root in ("/", "gs://", "gs:///", ""):
        assert names_a_root(root), root
    for output in ("gs://bucket/out", "/data/out"):
        assert not names_a_root(output), output
    assert issubclass(ReduceConfig, JobConfig)
