"""Typed configuration: frozen pydantic models, unknown keys rejected, loaded from YAML.

Every config class in sftgate derives from `StrictModel`; defaults live on the fields (with their
trade-off in `description`), never in `cfg.get("x", default)` calls spread through the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sftgate.errors import InputError, Problem

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def validation_problems(
    err: ValidationError, file: str, item: str = "", prefix: str = ""
) -> list[Problem]:
    """Turn a pydantic ValidationError into one Problem per wrong field."""
    problems = []
    for e in err.errors():
        field = _loc(e["loc"])
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
        kind = e["type"]
        if kind == "extra_forbidden":
            message, fix = "unknown key", "remove it or check its spelling"
        elif kind == "missing":
            message, fix = "required field is missing", "add it"
        else:
            message, fix = e["msg"], ""
        problems.append(Problem(file=file, item=item, field=field, message=message, fix=fix))
    return problems


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(Problem(str(path), "", "", "file not found", "check the path")) from None
    except UnicodeDecodeError as e:
        raise InputError(
            Problem(str(path), "", "", f"not UTF-8 ({e.reason} at byte {e.start})", "save as UTF-8")
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(
            Problem(str(path), "", "", f"not valid YAML: {e}", "fix the syntax")
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(
            Problem(str(path), "", "", "the top level must be a mapping of keys to values", "")
        )
    return data


def load_config(cls: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    """Load `cls` from a YAML file, with `overrides` (e.g. from CLI flags) applied on top.

    Override keys may be dotted (`lora.r`) to reach nested sections.
    """
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        target = data
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise InputError(validation_problems(e, str(path))) from None
