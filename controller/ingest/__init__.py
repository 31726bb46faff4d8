"""``farm controller ingest``: the agents' MQTT messages into Redis (see
:mod:`controller.ingest.service`)."""

from controller.ingest.parse import Rejected, _record_schema, _storable, parse_sample_batch
from controller.ingest.service import (
    _CLOSED_STATES,
    _STORE_SAMPLES,
    Ingest,
    encode_records,
    main,
    split_records,
)

__all__ = [
    "_CLOSED_STATES",
    "_STORE_SAMPLES",
    "Ingest",
    "Rejected",
    "_record_schema",
    "_storable",
    "encode_records",
    "main",
    "parse_sample_batch",
    "split_records",
]
