"""A pydantic model's validation, mirrored to return plain values: the same JSON accepted and
rejected, but the result is dicts of the payload's own values (an integer sent for a float
field stays an integer) rather than model instances.

Workaround: pydantic has no public API for that (validating JSON against a model into plain
values of the input, without the model's coercions). :func:`storable_schema` reads the core
schema pydantic generates for a model (``__pydantic_core_schema__``), whose shape is not a
stable API and may change in any pydantic minor version, so pyproject.toml bounds pydantic
(and with it pydantic-core, which pydantic pins) below its next minor; a shape this does not
know raises ``TypeError`` at import rather than validate differently. A public pydantic API
for "validate to plain values, keeping the input's numbers" would remove this module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
