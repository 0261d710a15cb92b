"""How a flag is declared (``option``), checked (``Range``, checks) and parsed (``BaseConfig``): the machinery
every job's config dataclass is built from."""

from __future__ import annotations

import argparse
import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

Check = Callable[[Any], str | None]


class UsageError(ValueError):
    """What the user asked for cannot run: reported in one line, exit status 2, nothing started."""


class ConfigError(UsageError):
    """A bad flag value; raised before the pipeline is built."""


def names_a_root(output: str) -> bool:
    """True for '/', 'gs://' and the like: a job replaces --output whole, so never a root."""
    stripped = output.rstrip("/")
    return stripped in ("", "gs:") or stripped.endswith("gs:/")


def default_run_id() -> str:
    return time.strftime("manual__%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    check: Check | None = None,
    choices: tuple[Any, ...] | None = None,
    flag: str | None = None,
    kind: type | None = None,
    group: str | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field that is also a command-line flag ``--<name>`` (or ``flag``).

    Args:
        default: the one default; a field without one is a required flag.
        help: the flag's help text.
        check: value -> problem text or None; run by ``validate()``.
        choices: allowed values (enum members or plain values), checked by argparse and ``validate()``.
        flag: the flag's name when it differs from the field's (``--input`` fills ``inputs``).
        kind: the value type when the default cannot tell (a default of None).
        group: argparse group title.
        default_factory: for a default computed per run (the run id).
    """
    meta = {"help": help, "check": check, "choices": choices, "flag": flag, "kind": kind, "group": group}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Range:
    """A numeric flag's bounds: the check ``validate()`` runs, and readable bounds, so the trigger-param table
    (``beam_jobs.nightly.params``) takes a job flag's range from here instead of restating it."""

    minimum: float
    maximum: float | None = None
    what: str = ""

    def __call__(self, v: Any) -> str | None:
        if self.maximum is None:
            return None if v >= self.minimum else f"must be >= {self.minimum}{self.what}, got {v}"
        if self.minimum <= v <= self.maximum:
            return None
        return f"must be between {self.minimum} and {self.maximum}{self.what}, got {v}"


def between(low: float, high: float, what: str = "") -> Range:
    return Range(low, high, what)


def at_least(low: float, what: str = "") -> Range:
    return Range(low, None, what)


def _flag(f) -> str:
    return "--" + (f.metadata.get("flag") or f.name)


def _kind(f) -> type:
    if f.metadata.get("kind"):
        return f.metadata["kind"]
    default = f.default if f.default is not MISSING else None
    return type(default) if default is not None else str


@dataclass(frozen=True, kw_only=True)
class BaseConfig:
    """Flags every job has, Beam or not. Subclasses add theirs with ``option()``."""

    PROG: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""

    output: str = option(help="output directory; replaced whole on every run")
    run_id: str = option(
        help="recorded in every row (Airflow passes its run id); default: manual__<UTC time>-<random>",
        default_factory=default_run_id,
    )
    started_at: float = field(default_factory=time.time)

    def cross_field_problems(self) -> list[str]:
        """Checks that involve several fields; the per-field ones come from ``option(check=...)``."""
        return []

    def output_problems(self) -> list[str]:
        """What is wrong with where the job writes (a job that writes elsewhere overrides it)."""
        if not self.output:
            return ["--output is required"]
        if names_a_root(self.output):
            return [f"--output {self.output!r} must name a directory below the root, it is replaced whole"]
        return []

    def validate(self):
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                shown = ", ".join(str(c) for c in choices)
                problems.append(f"{_flag(f)} must be one of {shown}, got {value!r}")
            elif (check := f.metadata.get("check")) and value is not None and (problem := check(value)):
                problems.append(f"{_flag(f)} {problem}")
        problems += self.output_problems()
        problems += self.cross_field_problems()
        if problems:
            raise ConfigError("invalid arguments:\n  - " + "\n  - ".join(problems))
        return self

    @classmethod
    def arg_parser(cls) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=cls.PROG, description=cls.DESCRIPTION)
        groups: dict[str, Any] = {}
        for f in fields(cls):
            if "help" not in f.metadata:
                continue  # not a flag (started_at)
            group = f.metadata.get("group")
            target = groups.setdefault(group, parser.add_argument_group(group)) if group else parser
            kind = _kind(f)
            required = f.default is MISSING and f.default_factory is MISSING
            help_text = f.metadata["help"]
            if f.default not in (MISSING, None, False) and not isinstance(f.default, tuple):
                help_text += f" (default: {f.default})"
            # SUPPRESS: an absent flag leaves the field's own default in charge (declared once, above).
            kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "dest": f.name}
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction if f.default is True else "store_true"
            elif kind is tuple:
                kwargs["action"] = "append"
            else:
                kwargs["type"] = kind
            if f.metadata.get("choices") is not None:
                kwargs["choices"] = list(f.metadata["choices"])
                if issubclass(kind, enum.Enum):
                    kwargs["type"] = kind
            target.add_argument(_flag(f), required=required, **kwargs)
        return parser

    @classmethod
    def parse(cls, argv: list[str] | None):
        """(validated config, the arguments left for Beam)."""
        known, beam_args = cls.arg_parser().parse_known_args(argv)
        values = vars(known)
        for f in fields(cls):
            if _kind(f) is tuple and f.name in values:
                values[f.name] = tuple(values[f.name])
        return cls(**values).validate(), beam_args


@dataclass(frozen=True, kw_only=True)
class JobConfig(BaseConfig):
    """Flags every Beam job has."""

    num_shards: int = option(0, "output shards; 0 lets the runner decide", check=at_least(0, " (0 = runner decides)"))
    detach: bool = option(
        False,
        "remote runners: return once the job is submitted (Airflow's sensor waits; the job still "
        "writes its manifest, without the launcher's metrics)",
    )
