"""The key of a dataset's record digests (``row_state.record_digest``).

A record digest is taken over the clear source record (:func:`~syncd.changes.hashing.record_digester`).
Keyed with the mapping fingerprint alone, it is computable from the dataset YAML and syncd's
version: for a dataset that masks a column, anyone who also reads the target database could try
every value the hidden characters can have (the 8 birth-date digits of a masked ID number are
~46,000 guesses) and compare. So when the mapping masks a column, the key also mixes in secrets
that are neither in the database nor in the YAML (DESIGN §4.8):

- the dataset's source connection secrets: an http connection's ``auth`` secrets (app_secret,
  secret, key value), a front-end database URL's password;
- a hashed column's salt, which already feeds the fingerprint.

A masked dataset with none of them stores no record digest at all (NULL): each of its records is
mapped and compared by row hash on every run, and the configuration check warns about it
(``config.record_digest_off``). Rotating a secret changes every digest once: the next run maps
each record once, finds its row unchanged (no change-feed entry) and stores the new digest.

A dataset without a masked column keeps the fingerprint as its key (its clear values are stored
in the target table anyway, or hashed with a secret salt).
"""

from __future__ import annotations

from hashlib import blake2b
from typing import TYPE_CHECKING

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from syncd.config.model import AppConfig, DatasetConfig
    from syncd.mapping import CompiledMapping

__all__ = ["record_digest_key", "source_secrets"]


def source_secrets(app: AppConfig, dataset: DatasetConfig) -> list[str]:
    """The secret values of ``dataset``'s source connection (none for a file source, an http
    connection without auth, a database URL without a password)."""
    name = getattr(dataset.source, "connection", None)
    connection = app.connections.get(name) if name is not None else None
    if connection is None:
        return []
    if connection.type == "sql":
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            password = make_url(connection.url.get_secret_value()).password
        except ArgumentError:  # the configuration check reports it
            return []
        return [str(password)] if password else []
    return [v for v in _secrets(connection.auth) if v]


def _secrets(model: BaseModel) -> list[str]:
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            found += _secrets(value)
    return found


def record_digest_key(app: AppConfig, dataset: DatasetConfig, mapping: CompiledMapping) -> bytes | None:
    """The key of the record digests of one run of ``dataset`` (see the module docstring), or
    None: store no record digest. Computed once per run: it costs nothing per record."""
    if not mapping.masked:
        return mapping.fingerprint
    secrets = source_secrets(app, dataset)
    if not secrets and not mapping.salted:
        return None
    h = blake2b(mapping.fingerprint, digest_size=32, person=b"syncd-digest-key")
    for secret in secrets:
        data = secret.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big") + data)
    return h.digest()
