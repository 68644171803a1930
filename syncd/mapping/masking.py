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

``hash`` replaces a value with the hex digest of ``salt + value`` (UTF-8), sha256 by default
or SM3 (国密) where OpenSSL provides it: equal inputs stay joinable, but the value cannot be
recovered by hashing every possible ID number without the salt. The salt is a ``SecretStr``
and appears in no message, log line or generated source.

Both transforms (``mask``, ``hash``) are registered here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from syncd.config.model import TransformConfig
from syncd.mapping.base import MappingSpecError, Step, StepContext, register_transform, text_of

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


# --------------------------------------------------------------------------- the transforms


@register_transform("mask", "kind", "keep_first", "keep_last")
def _mask(cfg: TransformConfig, ctx: StepContext) -> Step:
    if cfg.kind is None:
        raise MappingSpecError((), "mask needs a `kind`: id_number, phone, name or keep")
    if cfg.kind != "keep":
        for opt in ("keep_first", "keep_last"):
            if opt in cfg.model_fields_set:
                raise MappingSpecError((opt,), f"{opt} applies to kind: keep only (kind {cfg.kind} is fixed)")
    for opt in ("keep_first", "keep_last"):
        n = getattr(cfg, opt)
        if n is not None and n < 0:
            raise MappingSpecError((opt,), f"{opt} must be 0 or more")
    mask = mask_function(cfg.kind, cfg.keep_first or 0, cfg.keep_last or 0)

    def masked(v: Any) -> Any:
        if v is None:
            return None
        return mask(v if v.__class__ is str else text_of(v))

    return Step(
        masked,
        "if {v}.__class__ is str: {v} = {mask}({v})\nelif {v} is not None: {v} = {f}({v})",
        {"mask": mask},
        on_str="{v} = {mask}({v})",
        str_result="str",
        none_safe=True,
        stripped_out="keep",
    )


@register_transform("hash", "salt", "algorithm")
def _hash(cfg: TransformConfig, ctx: StepContext) -> Step:
    if cfg.salt is None:
        raise MappingSpecError(
            (),
            "hash needs a `salt` (write it as ${credential:NAME} or ${ENV}): an unsalted hash of "
            "an ID number or phone number is reversed by trying every possible number",
        )
    salt = cfg.salt.get_secret_value()
    if not salt:
        raise MappingSpecError(("salt",), "the hash salt is empty")
    algorithm = cfg.algorithm or "sha256"
    if algorithm == "sm3" and not sm3_available():
        raise MappingSpecError(
            ("algorithm",),
            "sm3 is not available from this machine's OpenSSL (hashlib.new('sm3') fails): "
            "use algorithm: sha256, or install an OpenSSL build with SM3",
        )
    digest = hasher(algorithm, salt.encode("utf-8"))

    def hashed(v: Any) -> Any:
        if v is None:
            return None
        return digest(v if v.__class__ is str else text_of(v))

    return Step(
        hashed,
        "if {v}.__class__ is str: {v} = {digest}({v})\nelif {v} is not None: {v} = {f}({v})",
        {"digest": digest},
        on_str="{v} = {digest}({v})",
        str_result="str",
        none_safe=True,
        stripped_out="yes",
    )
