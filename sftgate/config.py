"""Typed configuration: frozen pydantic models, unknown keys rejected, loaded from YAML.

Every config class in sftgate derives from `StrictModel`; defaults live on the fields (with their
trade-off in `description`), never in `cfg.get("x", default)` calls spread through the code.

Errors speak the config's language: a field is named by its path in the file
(`policy.round1[0].lr`), the message says what the value must be and what it was, and the fix
says what to write; pydantic's own wording ("Input should be a valid string") never reaches the
user. A key given twice in a YAML mapping, at any depth, is an error (YAML itself lets the last
one win silently).

Relative paths written in a config file are relative to the file's folder (`path_under`), so a
config works from any current folder; paths given as flags are relative to the current folder.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from sftgate.errors import InputError, Problem
from sftgate.fsutil import read_input_bytes
from sftgate.tiny import TINY_MODEL_ID

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Top-level fields holding a path (`model`: a hub id or a local path) that `load_config`
    # makes relative to the config file's folder.
    path_fields: ClassVar[tuple[str, ...]] = ()


def path_under(base: Path, value: str) -> str:
    """A path written in a config file whose folder is `base`: a relative one is relative to it."""
    return value if Path(value).is_absolute() else str(base / value)


def model_under(base: Path, model: str) -> str:
    """A model written in a config file: a local folder or file relative to the file's folder
    where one is there, else as written (a hub id, tiny-qwen3)."""
    if model != TINY_MODEL_ID and (base / model).exists():
        return path_under(base, model)
    return model


def resolve_paths(config: M, base: Path, *, given: Collection[str] = ()) -> M:
    """`config` with the paths of its `path_fields` that the file set made relative to `base`,
    the file's folder; a field in `given` (a flag's override) stays as it is, relative to the
    current folder, and an unset field keeps its default."""
    update = {
        k: model_under(base, v) if k == "model" else path_under(base, v)
        for k in type(config).path_fields
        if k in config.model_fields_set and k not in given and (v := getattr(config, k)) is not None
    }
    return config.model_copy(update=update) if update else config


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


def field_path(loc: tuple[Any, ...], data: Any = None) -> str:
    """`policy.round1[0].lr` for pydantic's loc ('policy', 'round1', 0, 'lr', 'float').

    With the validated input `data`, the path stops where the input does: the trailing names
    pydantic adds for the members of a union ('float', 'int') are not fields of the file.
    """
    parts: list[Any] = []
    node = data
    for i, p in enumerate(loc):
        if data is not None:
            in_mapping = isinstance(node, Mapping) and p in node
            in_list = isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node)
            missing_key = isinstance(node, Mapping) and i == len(loc) - 1
            if not (in_mapping or in_list or missing_key):
                break
            node = node[p] if in_mapping or in_list else None
        parts.append(p)
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPES = {
    "string_type": ("must be text", "write it as text, in quotes if YAML reads it as another type"),
    "int_type": ("must be a whole number", "write a whole number such as 200"),
    "int_parsing": ("must be a whole number", "write a whole number such as 200"),
    "int_from_float": ("must be a whole number", "write it without a fractional part"),
    "float_type": ("must be a number", "write a number such as 2.0e-4"),
    "float_parsing": ("must be a number", "write a number such as 2.0e-4"),
    "finite_number": ("must be a finite number", "write a number, not inf or nan"),
    "bool_type": ("must be true or false", "write true or false"),
    "bool_parsing": ("must be true or false", "write true or false"),
    "list_type": ("must be a list", "write a list, one '- item' per line or [a, b]"),
    "dict_type": ("must be a mapping of keys to values", "write 'key: value' lines under it"),
    "model_type": ("must be a mapping of keys to values", "write 'key: value' lines under it"),
    "model_attributes_type": (
        "must be a mapping of keys to values",
        "write 'key: value' lines under it",
    ),
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def describe_error(e: ErrorDetails) -> tuple[str, str]:
    """(what is wrong, what to do) for one pydantic error, in sftgate's words."""
    kind, ctx, got = e["type"], e.get("ctx") or {}, _shown(e.get("input"))
    if kind == "extra_forbidden":
        return "unknown key", "remove it or check its spelling"
    if kind == "missing":
        return "required field is missing", "add it"
    if kind in _TYPES:
        message, fix = _TYPES[kind]
        return f"{message}, got {got}", fix
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {got}", "use one of those values"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {bound}, got {got}", f"use a value {_BOUNDS[kind]} {bound}"
    if kind == "string_too_short":
        return "must not be empty", "give a value"
    if kind == "too_short":
        return f"needs at least {ctx['min_length']} item(s)", "add items"
    if kind == "too_long":
        return f"takes at most {ctx['max_length']} item(s)", "remove items"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", e["msg"])), ""
    return f"{e['msg'][:1].lower()}{e['msg'][1:]}, got {got}", ""


def validation_problems(
    err: ValidationError, file: str, item: str = "", prefix: str = "", data: Any = None
) -> list[Problem]:
    """Turn a pydantic ValidationError into one Problem per wrong field (`data`: the validated
    input, to name fields by their path in it)."""
    problems: list[Problem] = []
    seen = set()
    for e in err.errors():
        field = field_path(e["loc"], data)
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
        if field in seen:  # the other members of a union: one problem per field
            continue
        seen.add(field)
        message, fix = describe_error(e)
        problems.append(Problem(file=file, item=item, field=field, message=message, fix=fix))
    return problems


def duplicate_key(node: yaml.Node | None) -> tuple[str, int, int] | None:
    """(dotted key, line, line of its first occurrence) of the first key given twice in a
    mapping anywhere in a composed YAML document, or None."""
    stack: list[tuple[yaml.Node, str]] = [(node, "")] if node is not None else []
    seen_nodes: set[int] = set()  # aliases share nodes; a recursive alias would loop
    while stack:
        current, path = stack.pop()
        if id(current) in seen_nodes:
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[tuple[str, Any], int] = {}
            for key_node, value_node in current.value:
                name = f"{path}.{key_node.value}" if path else str(key_node.value)
                if (
                    isinstance(key_node, yaml.ScalarNode)
                    and key_node.tag != "tag:yaml.org,2002:merge"
                ):
                    key = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if key in first:
                        return name, line, first[key]
                    first[key] = line
                stack.append((value_node, name))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(current.value))
    return None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = read_input_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            Problem(str(path), "", "", f"not UTF-8 ({e.reason} at byte {e.start})", "save as UTF-8")
        ) from None
    try:
        duplicate = duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        if duplicate is not None:
            key, at, first_at = duplicate
            raise InputError(
                Problem(
                    str(path),
                    f"line {at}",
                    key,
                    f"key given twice (first at line {first_at}); YAML would silently keep the last",
                    "keep one of them",
                )
            )
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        where_text = f"line {where.line + 1}" if where is not None else ""
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(
            Problem(str(path), where_text, "", f"not valid YAML: {reason}", "fix the syntax")
        ) from None
    if parsed is None:
        parsed = {}
    if not isinstance(parsed, dict):
        raise InputError(
            Problem(
                str(path),
                "",
                "",
                "the top level must be a mapping of keys to values",
                "write 'key: value' lines",
            )
        )
    return parsed


def load_config(cls: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    """Load `cls` from a YAML file, with `overrides` (e.g. from CLI flags) applied on top.

    Override keys may be dotted (`lora.r`) to reach nested sections. The file's relative paths
    (`cls.path_fields`) are relative to its folder, the overrides' to the current folder.
    """
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        target = data
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise InputError(
                    Problem(
                        str(path),
                        "",
                        p,
                        f"must be a mapping of keys to values to take the override of {key}",
                        "write 'key: value' lines under it",
                    )
                )
        target[leaf] = value
    try:
        config = cls.model_validate(data)
    except ValidationError as e:
        raise InputError(validation_problems(e, str(path), data=data)) from None
    return resolve_paths(config, Path(path).resolve().parent, given=set(overrides or {}))
