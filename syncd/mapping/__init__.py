"""Field mapping: raw upstream records -> typed target rows (THE hot path of syncd).

A dataset's ``columns:`` are compiled once per run by :func:`compile_mapping` into a
:class:`CompiledMapping`; calling it with a raw record returns the row tuple (in
``columns`` order) or raises :class:`~syncd.errors.RecordError` naming the column, so the
runner can quarantine the record with the reason. Configuration mistakes surface at compile
time as :class:`MappingSpecError` with their exact position in the dataset document.

Modules: :mod:`.transforms` and :mod:`.validators` (the registries), :mod:`.casts`,
:mod:`.dates` (strptime-exact fast date parsing), :mod:`.masking`, :mod:`.compiler`.
"""

from __future__ import annotations

from syncd.mapping.base import MappingSpecError
from syncd.mapping.compiler import CompiledMapping, ReplayMapping, compile_mapping, compile_replay
from syncd.mapping.transforms import TRANSFORMS
from syncd.mapping.validators import VALIDATORS

__all__ = [
    "TRANSFORMS",
    "VALIDATORS",
    "CompiledMapping",
    "MappingSpecError",
    "ReplayMapping",
    "compile_mapping",
    "compile_replay",
]
