"""Masking (脱敏) and salted hashing of personal data.

Masks keep a few characters at each end and replace the rest with ``*`` one for one, so the
length stays visible but the identifying middle does not. Python strings index by code
point, so a character outside the BMP (𠮷) counts as one character.

=============  =====================================  ============================
kind           keeps                                  example
=============  =====================================  ============================
``id_number``  first 6 (division code) and last 4     ``330102********1234``
``phone``      first 3 and last 4                     ``138****5678``
``name``       the surname (first character)          ``张*``, ``张**``; ``张`` stays
``keep``       ``keep_first`` and ``keep_last``       —
=============  =====================================  ============================

A value no longer than the characters a mask would keep is masked completely (a short value
must not leak whole); the one exception is a one-character name, which is only a surname.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

__all__ = ["MASK_KINDS", "hasher", "mask_function", "mask_text", "sm3_available"]

MASK_KINDS: dict[str, tuple[int, int]] = {
    "id_number": (6, 4),
    "phone": (3, 4),
    "name": (1, 0),
}


def mask_text(text: str, keep_first: int, keep_last: int) -> str:
    """Replace all but the first ``keep_first`` and last ``keep_last`` characters with ``*``."""
    n = len(text)
    hidden = n - keep_first - keep_last
    if hidden <= 0:
        return "*" * n
    return text[:keep_first] + "*" * hidden + (text[n - keep_last :] if keep_last else "")


def mask_function(kind: str, keep_first: int = 0, keep_last: int = 0) -> Callable[[str], str]:
    """A ``str -> str`` mask of the given kind (``keep`` uses ``keep_first``/``keep_last``)."""
    if kind == "name":

        def name(text: str) -> str:
            n = len(text)
            return text if n <= 1 else text[0] + "*" * (n - 1)

        return name
    first, last = MASK_KINDS.get(kind, (keep_first, keep_last))
    stars = "*" * 64

    if kind in MASK_KINDS:

        def fixed(text: str) -> str:
            hidden = len(text) - first - last
            if 0 < hidden <= 64:
                return text[:first] + stars[:hidden] + text[-last:]
            return mask_text(text, first, last)

        return fixed

    def keep(text: str) -> str:
        return mask_text(text, first, last)

    return keep


def sm3_available() -> bool:
    """Whether the OpenSSL behind ``hashlib`` provides SM3 (国密)."""
    try:
        hashlib.new("sm3")
    except ValueError:
        return False
    return True


def hasher(algorithm: str, salt: bytes) -> Callable[[str], str]:
    """``text -> hex digest of (salt + text)`` with sha256 or sm3; the salt never leaves here."""
    base = hashlib.sha256(salt) if algorithm == "sha256" else hashlib.new("sm3", salt)

    def digest(text: str) -> str:
        h = base.copy()
        h.update(text.encode("utf-8"))
        return h.hexdigest()

    return digest
