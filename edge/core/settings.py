"""What every configuration file of the product shares: TOML in, a pydantic model out, errors naming the key.

The daemon (edge/config/), the PLC bridge (edge/bridge/cli.py) and the view (edge/view/config.py) each
describe their keys as `Section` models and read their file through `load`: a typo is an error naming
the key and its line instead of a silently ignored setting, and NaN or infinity is never a value (a
deadline of `inf` or a map scale of `nan` would pass a range check and break the daemon later).

tomllib is 3.11's; JetPack 6 runs Python 3.10, where the same parser is the `tomli` package.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edge.core.errors import ConfigError

try:
    import tomllib  # novermin - guarded: Python 3.10 takes tomli below
except ModuleNotFoundError:
    import tomli as tomllib

ModelT = TypeVar("ModelT", bound=BaseModel)


class Section(BaseModel):
    """A table of a configuration file: unknown keys and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def parse_toml(text: str) -> dict:
    """`text` as TOML; raises tomllib.TOMLDecodeError (`TomlError`)."""
    return tomllib.loads(text)


TomlError = tomllib.TOMLDecodeError


def read_toml(file: Path, what: str = "config") -> tuple[dict, str]:
    """(data, text) of TOML file `file`; ConfigError naming the file for a missing, unreadable or invalid one."""
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} {file}: does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{what} {file}: cannot be read ({error})") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{what} {file}: not valid TOML ({error})") from None


def resolve_paths(data: dict, base: Path, keys: tuple[tuple[str | None, str], ...]) -> None:
    """Paths in a file are relative to its directory: each (table or None for the top, key) of `keys`
    holding a relative path string is made absolute under `base`."""
    for section, key in keys:
        table = data if section is None else data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            path = Path(table[key]).expanduser()
            table[key] = str(path if path.is_absolute() else base / path)


def parse_override(text: str) -> tuple[list[str], object]:
    """`pipeline.deadline_ms=200` → (["pipeline", "deadline_ms"], 200). The value is a TOML value;
    one that is not valid TOML (e.g. a bare path) is taken as a string."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or not all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. pipeline.deadline_ms=200")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: object) -> None:
    table = data
    for part in path[:-1]:
        child = table.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"key {'.'.join(path)}: {part!r} is a value, not a table")
        table = child
    table[path[-1]] = value


def key_line(text: str, loc: tuple) -> int | None:
    """Best-effort line of key `loc` (e.g. ("pipeline", "deadline_ms")) in TOML `text`."""
    table: tuple = ()
    names = [str(part) for part in loc if not isinstance(part, int)]
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\[?\s*([A-Za-z0-9_.\-\s\"]+?)\s*\]", stripped)
        if header:
            table = tuple(part.strip().strip('"') for part in header.group(1).split("."))
            if list(table) == names:
                return number
            continue
        match = re.match(r"^([A-Za-z0-9_.\-\"\s]+?)\s*=", stripped)
        if match:
            key = tuple(part.strip().strip('"') for part in match.group(1).split("."))
            full = list(table + key)
            if full == names[:len(full)] and full:
                return number
    return None


def describe(error: ValidationError, text: str | None, origin: str, tags: tuple[str, ...] = ()) -> str:
    """One line per problem: `origin: key a.b (line N): message, got VALUE; …`. `tags` are the
    discriminator values pydantic inserts into the location of a union member ("source", "folder",
    "path"), left out so the key reads as the file spells it."""
    lines = []
    for item in error.errors():
        loc = tuple(part for index, part in enumerate(item["loc"])
                    if not (index > 0 and isinstance(part, str) and part in tags))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # A kind that does not exist: name the key that chose it.
            loc = (*loc, "kind")
            context = item.get("ctx", {})
            message = (f"{context.get('tag', 'no kind')!r} is not a kind here; expected one of "
                       f"{context.get('expected_tags', 'the documented kinds')}")
        key = ".".join(str(part) for part in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = "unknown key (not one of the documented keys)"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "finite_number":
            message = "must be a finite number (NaN and infinity are never values)"
        where = ""
        if text is not None:
            line = key_line(text, loc)
            if line is not None:
                where = f" (line {line})"
        value = item.get("input")
        shown = "" if item["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) else f", got {value!r}"
        lines.append(f"key {key}{where}: {message}{shown}")
    return f"{origin}: " + "; ".join(lines)


def load(model: type[ModelT], file: str | Path | None, *, what: str = "config", resolve=None,
         overrides: list[tuple[list[str], object]] = (), tags: tuple[str, ...] = ()) -> ModelT:
    """`model` validated from TOML `file` (if any) with `overrides` applied on top. `resolve(data, folder)`
    makes the file's relative paths absolute under its folder. Raises ConfigError naming the key and its
    line."""
    data: dict = {}
    text = None
    origin = "command line"
    if file is not None:
        file = Path(file)
        origin = f"{what} {file}"
        data, text = read_toml(file, what)
        if resolve is not None:
            resolve(data, file.resolve().parent)
    for path, value in overrides:
        apply_override(data, path, value)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe(error, text, origin, tags)) from None
