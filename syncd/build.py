"""Which code this process runs: a digest of the syncd package's own source files.

The version string (``syncd.__version__``) does not change with every fix, so it cannot tell two
builds apart. :data:`SOURCE_DIGEST` can: SHA-256 (its first 16 hex digits) over every ``.py`` file
of the package this module was imported from, each as its path relative to the package (POSIX
separators), a NUL, its length and its bytes, in sorted path order. It does not depend on where the
package is installed, the working directory or the interpreter's hash seed, so two processes
running the same files (the run and its read worker, :mod:`syncd.sources.worker`) compute the same.

It is computed once, when this module is first imported: at the start of every ``syncd`` command
(:mod:`syncd.cli` imports it) and of every read worker, so it describes the files the process
loaded, not files replaced on disk while a long-running daemon kept the old ones in memory.
Reading and hashing the ~120 files (1.2 MB) costs 4-9 ms (best of 20 on a busy 2-core machine;
``import syncd.cli`` takes 0.5-1 s there).

Two uses: the mapping fingerprint (:func:`syncd.mapping.compiler._fingerprint`) includes it, so a
fix anywhere in syncd's code invalidates the stored record digests once (docs/upgrade.md); and
``syncd --version`` prints it, so an operator can confirm which build runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["SOURCE_DIGEST", "source_digest"]


def _digest_of(package: str) -> str:
    """The digest of every ``.py`` file under the directory ``package`` (see the module docstring).
    ``os.walk`` and plain strings: pathlib's ``rglob`` and ``relative_to`` doubled the cost."""
    files: list[tuple[str, str, str]] = []
    for root, dirs, names in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(root, package).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        files += [(prefix + n, root, n) for n in names if n.endswith(".py")]
    h = hashlib.sha256()
    for name, root, n in sorted(files):
        data = Path(root, n).read_bytes()
        h.update(b"%s\0%d\0" % (name.encode("utf-8", "surrogateescape"), len(data)))
        h.update(data)
    return h.hexdigest()[:16]


SOURCE_DIGEST: str = _digest_of(str(Path(__file__).resolve().parent))
"""This process's syncd source digest, 16 hex digits (computed at import)."""


def source_digest() -> str:
    """:data:`SOURCE_DIGEST`; a function, so that a test can stand in another build's."""
    return SOURCE_DIGEST
