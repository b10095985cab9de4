"""Declarative key-remapping schemas: the torch-free engine, the loader, and key alignment.

Built-in schemas are the ``*.toml`` files next to this module; third parties add theirs through
the ``ckpt_migrate.schemas`` entry-point group.
"""

from ckpt_migrate.schemas.align import Alignment, align_keys, schema_from_alignment
from ckpt_migrate.schemas.engine import (
    RULE_KINDS,
    ListTensor,
    ListTensorOps,
    Rule,
    RuleReport,
    Schema,
    SchemaResult,
    TensorOps,
    apply_schemas,
)
from ckpt_migrate.schemas.loader import (
    ENTRY_POINT_GROUP,
    available_ids,
    list_schemas,
    load_schema,
    loads_schema,
    parse_schema,
    resolve_schemas,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "RULE_KINDS",
    "Alignment",
    "ListTensor",
    "ListTensorOps",
    "Rule",
    "RuleReport",
    "Schema",
    "SchemaResult",
    "TensorOps",
    "align_keys",
    "apply_schemas",
    "available_ids",
    "list_schemas",
    "load_schema",
    "loads_schema",
    "parse_schema",
    "resolve_schemas",
    "schema_from_alignment",
]
