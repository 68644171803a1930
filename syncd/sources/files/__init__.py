"""The file source: CSV, XLSX and JSONL files dropped into a folder, each taken once."""

from __future__ import annotations

from syncd.sources.files.ledger import FileLedger, files_table
from syncd.sources.files.readers import FALLBACK_ENCODINGS, FileProblem, inspect_file, read_records
from syncd.sources.files.source import FAILED, PROCESSED, FileSource

__all__ = [
    "FAILED",
    "FALLBACK_ENCODINGS",
    "PROCESSED",
    "FileLedger",
    "FileProblem",
    "FileSource",
    "files_table",
    "inspect_file",
    "read_records",
]
