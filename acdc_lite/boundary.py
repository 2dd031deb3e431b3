"""Reading what comes from outside (files, options) into typed values, with one-line errors.

Every error names the file (or option), the field, and the fix. Two kinds, told apart by the CLI's
exit code: `UsageError` (2: an option or setting that cannot work as given) and `InputError`
(1: a file that cannot be read as what it should be). Nothing here allocates in proportion to a
number read from a file: size limits are checked first (`check_size`).
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import MISSING, fields
from pathlib import Path

MAX_FILE_BYTES = 512 * 1024 * 1024  # any JSON file we read whole
MAX_LAYERS, MAX_HEADS = 1024, 1024  # a model graph declared in a file (GPT-3 has 96 x 96)


class UsageError(ValueError):
    """An option or setting that cannot work as given (exit code 2); the message says what to pass instead."""


class InputError(ValueError):
    """A file that cannot be read as what it should be (exit code 1); the message names file, field and fix."""


def read_text(path: str | Path, kind: str) -> str:
    """The UTF-8 text of `path`, or an InputError naming the file, the byte offset and the fix."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{kind} {path} does not exist")
    if not path.is_file():
        raise InputError(f"{kind} {path} is not a file (a directory?); give the path of the {kind}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InputError(f"{kind} {path} is {size / 2**20:.0f} MB, more than the {MAX_FILE_BYTES // 2**20} MB limit")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{kind} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e


def read_json_object(path: str | Path, kind: str) -> dict:
    """A JSON file whose top level must be an object: the dict, or an InputError naming the file."""
    text = read_text(path, kind)
    if not text.strip():
        raise InputError(f"{kind} {path} is empty; expected a JSON object")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise InputError(f"{kind} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except ValueError as e:
        raise InputError(f"{kind} {path}: {e}") from e
    if not isinstance(value, dict):
        raise InputError(f"{kind} {path}: the top level is a JSON {_json_type(value)}, expected an object {{...}}")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number; write a finite number or null")


def _json_type(value) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}.get(
        type(value), type(value).__name__)


def expect(value, types: type | tuple, where: str, fix: str):
    """`value` if it is of `types` (bool never counts as a number), else an InputError `where: ... ; fix`."""
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)))
    if not ok:
        raise InputError(f"{where} is a JSON {_json_type(value)} ({_short(value)}); {fix}")
    return value


def check_size(value, limit: int, where: str) -> int:
    """An int in [1, limit], checked before anything is allocated from it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where} is {_short(value)}; it must be a whole number from 1 to {limit}")
    if not 1 <= value <= limit:
        raise InputError(f"{where} is {value}; it must be from 1 to {limit} (a larger model graph is not supported)")
    return value


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- typed settings ---------------------------------------------------------------------------
def parse_settings(cls, values: dict, source: str, as_options: bool = False):
    """Build the frozen dataclass `cls` from `values`, strictly typed (no "5" for 5, no true for 1, finite
    floats only, no unknown keys), with the range limits each field declares in its metadata
    (`ge`, `gt`, `le`, `lt`, pydantic's names). A violation is a UsageError naming `source` and the field
    (as a command-line option `--field-name` when `as_options`).
    """
    import pydantic  # here, not at the top: reading options must not slow down commands that never do

    hints = typing.get_type_hints(cls)
    spec = {}
    for f in fields(cls):
        if not f.init:
            continue
        limits = {k: v for k, v in f.metadata.items() if k in ("ge", "gt", "le", "lt")}
        default = f.default if f.default is not MISSING else ...
        spec[f.name] = (hints[f.name], pydantic.Field(default, **limits))
    model = pydantic.create_model(f"{cls.__name__}Check", __config__=pydantic.ConfigDict(
        strict=True, extra="forbid", allow_inf_nan=False), **spec)
    try:
        checked = model.model_validate(values)
    except pydantic.ValidationError as e:
        raise UsageError(_settings_message(e, values, source, sorted(spec), as_options)) from None
    return cls(**{k: getattr(checked, k) for k in spec if k in values})


def _settings_message(error, values: dict, source: str, known: list[str], as_options: bool) -> str:
    first = error.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "?"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown setting {name!r}; known settings: {', '.join(known)}"
    given = values.get(name)
    what = first["msg"][0].lower() + first["msg"][1:]
    if isinstance(given, str) and first["type"] in ("float_type", "int_type"):
        what += " (write the number without quotes)"
    label = f"--{name.replace('_', '-')}" if as_options else name
    return f"{source}: {label} = {_short(given)} is not allowed: {what}"
