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


# Marks a setting added after studies were first recorded: `pin_view` leaves it out while it is
# at its default, so a study recorded before it existed keeps its pins and resumes. Use it on
# every new field of a pinned config (Policy, Thresholds, TrainParams, DecodeSettings, ...):
#     new_knob: int = Field(0, description="...", json_schema_extra=ADDED)
ADDED: dict[str, Any] = {"added": True}


def pin_view(model: BaseModel) -> dict[str, Any]:
    """The model as its pin hashes it: its JSON dump without the ADDED fields at their defaults."""
    dump = model.model_dump(mode="json")
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        extra = info.json_schema_extra
        added = isinstance(extra, dict) and extra.get("added")
        if added and value == info.get_default(call_default_factory=True):
            dump.pop(name)
            continue
        if isinstance(value, BaseModel):
            dump[name] = pin_view(value)
    return dump


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
