"""A pydantic model's validation, mirrored to return plain values: the same JSON accepted and
rejected, but the result is dicts of the payload's own values (an integer sent for a float
field stays an integer) rather than model instances.

Workaround: pydantic has no public API for that (validating JSON against a model into plain
values of the input, without the model's coercions). :func:`storable_schema` reads the core
schema pydantic generates for a model (``__pydantic_core_schema__``), whose shape is not a
stable API and may change in any pydantic minor version, so pyproject.toml bounds pydantic
(and with it pydantic-core, which pydantic pins) below its next minor; a shape this does not
know raises ``TypeError`` at import rather than validate differently. A public pydantic API
for "validate to plain values, keeping the input's numbers" would remove this module.

:func:`storable_struct` mirrors that schema once more, as msgspec types: msgspec decodes,
validates and encodes again in native code, several times faster than pydantic-core's dicts
(a sample batch's records, most of ingest's traffic)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from pydantic_core import CoreSchema, core_schema

#: Numeric constraints a float field may carry (copied to the integer alternative).
_BOUNDS = ("ge", "gt", "le", "lt")
#: Keys of a model field that :func:`storable_schema` mirrors (or that do not change validation).
_FIELD_KEYS = frozenset(
    {
        "type",
        "schema",
        "metadata",
        "validation_alias",
        "serialization_alias",
        "serialization_exclude_if",
    }
)


def storable_schema(schema: Mapping[str, Any]) -> CoreSchema:
    """``schema`` (a pydantic core schema of the message contract) turned into one that
    validates the same JSON but returns what a store of the payload's values needs: plain
    dicts with sorted keys and every null-default field stated, and the payload's own numbers
    (so one sample, however often received, encodes to the same bytes).

    * a model becomes a typed dict with the same fields (sorted), aliases and extra
      behaviour; a field with a null default is filled with null when missing, one with
      another default stays missing. So every stored record states its nulls
      (``farm.sample.Sample.from_record`` needs ``segment`` and ``window``) and two receipts
      of one sample compare equal whether or not their nulls were written (the digest drops
      nulls, so filling them changes no digest); but storing ``"count":1`` where the agent
      sent nothing would change the digest, which keeps non-null values;
    * a float becomes "int, else float", so an integer stays an integer: pydantic turns an
      integer 5 into 5.0 for a float field, which would change the digest the agent computed
      over what it sent (``farm.messages.sample_digest`` of the stored values must equal the
      agent's). A float must be finite: JSON has no NaN or Infinity, and a literal beyond a
      double's range (``1e400``) would be parsed as infinity and stored as ``Infinity``.

    Any other kind of node, or an option this does not know, raises ``TypeError``: a change
    of the contract that this cannot mirror exactly must fail loudly (at import), not
    validate differently from the models."""
    kind = schema["type"]
    if kind == "model":
        config = schema.get("config", {})
        fields = schema["schema"]
        if (
            fields["type"] != "model-fields"
            or set(config) - {"title", "extra_fields_behavior"}
            or schema.get("custom_init")
            or schema.get("root_model")
            or schema.get("post_init")
            or fields.get("computed_fields")
            or {"extras_schema", "extras_keys_schema"} & set(fields)
        ):
            raise TypeError(f"model {schema.get('cls')!r}: options this cannot mirror")
        converted = {}
        for name in sorted(fields["fields"]):
            field = fields["fields"][name]
            if set(field) - _FIELD_KEYS:
                raise TypeError(f"field {name!r}: options this cannot mirror")
            inner, required = field["schema"], True
            if inner["type"] == "default":
                if set(inner) - {"type", "schema", "default"}:
                    raise TypeError(f"field {name!r}: a default this cannot mirror")
                required = False
                if inner["default"] is None:
                    inner = core_schema.with_default_schema(
                        storable_schema(inner["schema"]), default=None
                    )
                else:
                    inner = storable_schema(inner["schema"])
            else:
                inner = storable_schema(inner)
            converted[name] = core_schema.typed_dict_field(
                inner, required=required, validation_alias=field.get("validation_alias")
            )
        return core_schema.typed_dict_schema(
            converted, extra_behavior=config.get("extra_fields_behavior", "ignore")
        )
    if kind == "float":
        if set(schema) - {"type", "strict", "allow_inf_nan", *_BOUNDS}:
            raise TypeError(f"float schema {schema!r}: options this cannot mirror")
        bounds = {k: v for k, v in schema.items() if k in _BOUNDS}
        # Left to right: an integer literal is taken by the first choice and stays an int,
        # any other number fails it (strict) and is taken by the second.
        return core_schema.union_schema(
            [
                core_schema.int_schema(strict=True, **bounds),
                core_schema.float_schema(strict=True, allow_inf_nan=False, **bounds),
            ],
            mode="left_to_right",
        )
    if kind in ("int", "bool", "str", "literal"):
        return schema
    if kind == "nullable":
        return {**schema, "schema": storable_schema(schema["schema"])}
    if kind == "list":
        return {**schema, "items_schema": storable_schema(schema["items_schema"])}
    if kind == "tuple":
        return {**schema, "items_schema": [storable_schema(s) for s in schema["items_schema"]]}
    raise TypeError(f"core schema {kind!r}: not mirrored for storing")


#: Constraints :func:`storable_struct` carries over, per core schema type (msgspec ``Meta``
#: takes the same names); any other key of a node is refused.
_STRUCT_KEYS: Mapping[str, frozenset[str]] = {
    "int": frozenset({"type", "strict", *_BOUNDS}),
    "float": frozenset({"type", "strict", "allow_inf_nan", *_BOUNDS}),
    "bool": frozenset({"type", "strict"}),
    "str": frozenset({"type", "strict", "pattern", "min_length", "max_length"}),
    "literal": frozenset({"type", "expected"}),
    "nullable": frozenset({"type", "schema"}),
    "list": frozenset({"type", "items_schema", "min_length", "max_length", "strict"}),
    "tuple": frozenset({"type", "items_schema", "strict"}),
    "union": frozenset({"type", "choices", "mode"}),
    "typed-dict": frozenset({"type", "fields", "extra_behavior"}),
}
#: What a pattern :func:`storable_struct` carries over may not hold between its ``^`` and its
#: final ``$``: another anchor, a word boundary, or a group option or flag. pydantic-core
#: matches with Rust's regex, where ``$`` is the end of the text; Python's ``re`` (msgspec's)
#: also matches ``$`` before a final newline, so it becomes ``\Z``.
_PATTERN_REFUSED = ("$", "(?", "\\A", "\\Z", "\\z", "\\b", "\\B")


def storable_struct(schema: Mapping[str, Any], name: str) -> Any:
    """The msgspec type that decodes JSON as :func:`storable_schema`'s ``schema`` validates it
    (strictly), named ``name`` (nested structs get suffixes): a typed dict becomes a
    ``msgspec.Struct`` with its fields in the same (sorted) order, a null-default field
    defaulting to null (encoded), any other optional field to ``msgspec.UNSET`` (not
    encoded), an int-else-float union ``int | float`` (an integer stays one), constraints as
    ``msgspec.Meta``. Encoding a decoded struct with ``msgspec.json`` gives the same JSON values
    as encoding what ``schema`` returns.

    It may refuse a payload ``schema`` accepts (a duplicate key whose first value is invalid),
    never the reverse, as far as the tests can tell: a caller falls back to ``schema`` on a
    refusal. A node or option this does not know raises ``TypeError`` (at import)."""
    kind = schema["type"]
    if kind not in _STRUCT_KEYS or set(schema) - _STRUCT_KEYS[kind]:
        raise TypeError(f"core schema {dict(schema)!r}: not mirrored by a msgspec type")
    meta = {k: v for k, v in schema.items() if k in (*_BOUNDS, "min_length", "max_length")}
    if kind == "float" and schema.get("allow_inf_nan", True):
        raise TypeError("a float allowing infinity: msgspec refuses it")
    if "pattern" in schema:
        pattern = schema["pattern"]
        inner = pattern[1:-1] if pattern[:1] == "^" and pattern[-1:] == "$" else "$"
        if any(part in inner for part in _PATTERN_REFUSED):
            raise TypeError(f"pattern {schema['pattern']!r}: not mirrored by a msgspec type")
        meta["pattern"] = f"^{inner}\\Z"
    base: Any
    if kind in ("int", "float", "bool", "str"):
        base = {"int": int, "float": float, "bool": bool, "str": str}[kind]
    elif kind == "literal":
        if not all(isinstance(v, str) for v in schema["expected"]):
            raise TypeError(f"literal {schema['expected']!r}: only text is mirrored")
        base = Literal[tuple(schema["expected"])]
    elif kind == "nullable":
        return storable_struct(schema["schema"], name) | None
    elif kind == "list":
        base = list[storable_struct(schema["items_schema"], name)]  # type: ignore[misc]
    elif kind == "tuple":
        items = tuple(storable_struct(s, name) for s in schema["items_schema"])
        base = tuple[items]  # type: ignore[valid-type]
    elif kind == "union":
        choices = [c["type"] for c in schema["choices"]]
        if choices != ["int", "float"] or schema.get("mode") != "left_to_right":
            raise TypeError(f"union of {choices}: only int-else-float is mirrored")
        first, second = (storable_struct(c, name) for c in schema["choices"])
        return first | second
    else:
        base = _struct(schema, name)
    return Annotated[base, msgspec.Meta(**meta)] if meta else base


def _struct(schema: Mapping[str, Any], name: str) -> Any:
    """A typed dict of :func:`storable_schema` as a ``msgspec.Struct`` (see
    :func:`storable_struct`)."""
    if schema.get("extra_behavior", "ignore") not in ("forbid", "ignore"):
        raise TypeError(f"extra behaviour {schema['extra_behavior']!r}: not mirrored")
    fields: list[tuple[str, Any, Any]] = []
    for field_name, field in schema["fields"].items():
        if set(field) - {"type", "schema", "required", "validation_alias"}:
            raise TypeError(f"field {field_name!r}: options this cannot mirror")
        inner = field["schema"]
        alias = field.get("validation_alias")
        if alias is not None and not isinstance(alias, str):
            raise TypeError(f"field {field_name!r}: an alias path this cannot mirror")
        nested = f"{name}_{field_name}"
        default: Any
        if inner["type"] == "default":
            if inner["default"] is not None or set(inner) - {"type", "schema", "default"}:
                raise TypeError(f"field {field_name!r}: a default this cannot mirror")
            kind, default = storable_struct(inner["schema"], nested), None
        elif field["required"]:
            kind, default = storable_struct(inner, nested), msgspec.NODEFAULT
        else:
            kind, default = storable_struct(inner, nested) | msgspec.UnsetType, msgspec.UNSET
        fields.append((field_name, kind, msgspec.field(default=default, name=alias or field_name)))
    return msgspec.defstruct(
        name,
        fields,
        kw_only=True,
        forbid_unknown_fields=schema.get("extra_behavior") == "forbid",
    )
