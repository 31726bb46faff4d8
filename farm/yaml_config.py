"""YAML config files validated with pydantic, with errors that point into the file.

Every problem becomes one line ``FILE:LINE: field.path[2].sub: message``: the line is the
YAML node the pydantic error location points at (or the deepest part of it that exists, for
a missing key), so a typo, a wrong value or a cross-field conflict is found in the editor at
once. Models used here should forbid extra keys, so a misspelt key is an error that names it.

Cross-field checks in a ``model_validator`` can point at a field below the model they run
in by raising :class:`FieldError`; paths annotated :data:`ConfigPath` resolve against the
config file's directory.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ValidationError, ValidationInfo
from pydantic_core import ErrorDetails

M = TypeVar("M", bound=BaseModel)

Loc = tuple[int | str, ...]

#: Validation-context key holding the directory of the file being loaded.
CONFIG_DIR = "config_dir"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, line and field."""


class FieldError(ValueError):
    """A validation error located at ``loc`` below the model whose validator raises it.

    A ``model_validator`` sees several fields at once; raising this instead of a plain
    ``ValueError`` makes the message point at the field at fault rather than at the model.
    """

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    # Without a file (a model built in code) there is nothing to be relative to.
    value = value.expanduser()
    base = info.context.get(CONFIG_DIR) if isinstance(info.context, dict) else None
    if base is None or value.is_absolute():
        return value
    return Path(base) / value


#: A path that, in a config file, is relative to that file's directory (``~`` expands).
ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]


def read_yaml(path: str | Path, raw: bytes | None = None) -> tuple[Any, yaml.Node]:
    """Read the YAML file ``path`` (or its bytes ``raw``, already read): its data and its
    node tree (which knows every line).

    Raises :class:`ConfigError` for an unreadable or empty file, invalid YAML (with its
    line) and a key given twice in one mapping.
    """
    path = Path(path)
    try:
        source = (path.read_bytes() if raw is None else raw).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    try:
        node = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if node is None:
        raise ConfigError(f"{path}: the file is empty")
    # PyYAML silently keeps the last of two equal keys: a setting would vanish unnoticed.
    duplicates = [
        f"{path}:{line}: {key!r} is given twice" for key, line in _duplicate_keys(node, set())
    ]
    if duplicates:
        raise ConfigError("\n".join(duplicates))
    return data, node


def load_yaml_model(path: str | Path, model: type[M]) -> M:
    """Read the YAML file ``path`` and validate it as ``model``.

    Raises :class:`ConfigError` as :func:`read_yaml` does, and for every validation error,
    one line each.
    """
    path = Path(path)
    data, node = read_yaml(path)
    try:
        return model.model_validate(data, context={CONFIG_DIR: path.parent.absolute()})
    except ValidationError as exc:
        problems = sorted(
            (_describe(node, err, model) for err in exc.errors()), key=lambda p: p[0] or 0
        )
        raise ConfigError(
            "\n".join(
                f"{path}:{line}: {text}" if line else f"{path}: {text}" for line, text in problems
            )
        ) from None


def _describe(node: yaml.Node, err: ErrorDetails, model: type[BaseModel]) -> tuple[int | None, str]:
    """The line an error points at, and ``field: message`` (an unknown key: the known key it
    is closest to, if any)."""
    loc: Loc = tuple(err["loc"])
    message = err["msg"]
    if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
        close = difflib.get_close_matches(loc[-1], _keys_at(model, loc[:-1]), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    if err["type"] == "value_error":
        error = err.get("ctx", {}).get("error")
        # Our validators' messages are written for the user; pydantic's prefix adds nothing.
        message = str(error) if error is not None else message
        if isinstance(error, FieldError):
            loc = (*loc, *error.loc)
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return _line_of(node, loc), f"{field or '(top level)'}: {message}"


def _keys_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model nested at ``loc`` takes (field names and aliases); none where
    ``loc`` leads to no model."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue  # a list item: the list's model is already ``current``
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        current = _model_in(fields[part].annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", {})
    return [*fields, *(f.alias for f in fields.values() if f.alias)]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``X | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the YAML node at ``loc`` (the deepest one that exists); a mapping
    entry's line is its key's, which is where a nested block starts."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == part), None)
            if entry is None:
                break
            line = entry[0].start_mark.line + 1
            node = entry[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _duplicate_keys(node: yaml.Node, visited: set[int]) -> list[tuple[str, int]]:
    """Every key that repeats an earlier key of the same mapping, with its line."""
    found: list[tuple[str, int]] = []
    if id(node) in visited:  # an alias of a node already checked (YAML graphs may loop)
        return found
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    found.append((key.value, key.start_mark.line + 1))
                seen.add(key.value)
            found += _duplicate_keys(value, visited)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found += _duplicate_keys(item, visited)
    return found
