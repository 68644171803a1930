"""Targets: engines, table definitions, the state store and the batch writer.

Everything syncd writes lives in the target database: the data tables, and beside them its
own tables (row state, change feed, watermarks, runs, quarantine), so that each batch commits
atomically (DESIGN §4.1-4.4).
"""

from __future__ import annotations

from syncd.targets.engine import create_target_engine, describe_url, dialect_family, write_engine
from syncd.targets.history import RunTimes
from syncd.targets.records import BatchCounts, QuarantineItem, RunCounts, RunInfo, default_node
from syncd.targets.schema import (
    DatasetShape,
    MappingShape,
    StateTables,
    create_tables,
    ensure_target_table,
    shape_from_dataset,
    state_tables,
    target_table,
)
from syncd.targets.state import StateStore
from syncd.targets.verify import TargetSchemaError
from syncd.targets.writer import BatchWriter

__all__ = [
    "BatchCounts",
    "BatchWriter",
    "DatasetShape",
    "MappingShape",
    "QuarantineItem",
    "RunCounts",
    "RunInfo",
    "RunTimes",
    "StateStore",
    "StateTables",
    "TargetSchemaError",
    "create_tables",
    "create_target_engine",
    "default_node",
    "describe_url",
    "dialect_family",
    "ensure_target_table",
    "shape_from_dataset",
    "state_tables",
    "target_table",
    "write_engine",
]
