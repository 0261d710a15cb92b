"""The report's flags, declared once as a config dataclass (``beam_jobs.config.option``), and its one-line refusals.

Standard library only, like ``beam_jobs.config``: the wiring can validate a report's arguments cheaply.
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from typing import ClassVar, NoReturn

from beam_jobs.config import BaseConfig, ConfigError, at_least, between, names_a_root, option
from beam_jobs.contract import reports_dir

DEFAULT_WINDOW_DAYS = 7
DEFAULT_TOP_K = 24


def _date_check(value: str) -> str | None:
    try:
        if dt.date.fromisoformat(value).isoformat() == value:
            return None
    except ValueError:
        pass
    return f"must be a date YYYY-MM-DD, got {value!r}"


def _root_check(value: str) -> str | None:
    if not value.strip():
        return "is required (the folder holding embeddings/, projections/, index/, runs/ ...)"
    if names_a_root(value):
        return f"{value!r} must name a folder below the root"
    return None


@dataclass(frozen=True, kw_only=True)
class ReportConfig(BaseConfig):
    PROG: ClassVar[str] = "python -m beam_jobs.report"
    DESCRIPTION: ClassVar[str] = (
        "The morning report: what changed tonight, in pictures (report.html, report.png, report.json under "
        "<output_root>/reports/ds=<ds>/)."
    )

    output_root: str = option(
        help="the nightly output root (embeddings/, projections/, index/, runs/ ...)", check=_root_check
    )
    ds: str = option(help="the night, YYYY-MM-DD", check=_date_check)
    output: str | None = option(
        None, "where to write the report; replaced whole (default: <output_root>/reports/ds=<ds>)", kind=str
    )
    model_id: str | None = option(
        None, "the model whose rows are compared (default: the primary model of the night's extraction manifest)"
    )
    window_days: int = option(
        DEFAULT_WINDOW_DAYS,
        "the earlier nights compared with tonight: those of the same model among the N days before --ds",
        check=between(1, 366),
    )
    top_k: int = option(DEFAULT_TOP_K, "images shown under 'new tonight'", check=between(1, 200))
    clusters: int = option(16, "k-means clusters of the window", check=between(2, 256))
    movers: int = option(6, "moving clusters shown, each with its thumbnails and map", check=between(1, 32))
    window_sample: int = option(
        50_000,
        "rows of the window kept (seeded, uniform) to search for tonight's nearest neighbours and to cluster; "
        "the window is read once, row group by row group, never held whole",
        check=at_least(100),
    )
    dims: int = option(64, "PCA dimensions the neighbour search and the clustering work in", check=between(2, 1024))
    history_nights: int = option(
        30, "earlier nights each figure is compared with (median, trend)", check=between(1, 366)
    )
    seed: int = option(0, "seeds the samples and k-means")
    threads: int = option(
        0,
        "threads of the faiss searches (OpenMP); 0 = every core (1 can be faster on a busy machine)",
        check=at_least(0),
    )
    block_rows: int = option(8192, "rows read per block (speed vs memory)", check=at_least(256))
    thumbnail_size: int = option(96, "thumbnail pixels (longest side)", check=between(32, 256))
    thumbnail_timeout_s: float = option(10.0, "seconds one thumbnail read may take", check=at_least(0.1))
    thumbnail_time_budget_s: float = option(
        60.0, "seconds all thumbnail reads may take together; what misses it shows no picture", check=at_least(0)
    )
    max_html_mb: float = option(5.0, "size the page may reach (thumbnails stop there)", check=between(0.2, 100))

    def __post_init__(self) -> None:
        if not self.output and self.output_root and self.ds:
            object.__setattr__(self, "output", reports_dir(self.output_root, self.ds))

    def cross_field_problems(self) -> list[str]:
        return []

    @classmethod
    def arg_parser(cls) -> argparse.ArgumentParser:
        parser = super().arg_parser()

        def refuse(message: str) -> NoReturn:  # argparse's own errors: one line, exit 2 (not usage + error)
            raise ConfigError(message)

        parser.error = refuse  # type: ignore[method-assign]
        return parser


def one_line(exc: BaseException) -> str:
    """A refusal as one line: ``ConfigError`` lists its problems on several lines."""
    text = str(exc).replace("invalid arguments:\n  - ", "invalid arguments: ")
    return "; ".join(part.strip().removeprefix("- ") for part in text.splitlines() if part.strip())
