"""Load ``syncd.yaml`` and its dataset files into the frozen :class:`AppConfig`.

One file goes through: read (UTF-8, BOM allowed) → :func:`parse_yaml` (positions) →
``${...}`` interpolation → a walk along the model that gives text fields the text the operator
wrote (``00`` stays ``"00"``) and enforces the secrets rule → pydantic validation, whose errors
:func:`translate` positions and words. Then :mod:`crosscheck` relates the files to each other.

Every problem of every file is collected; :class:`ConfigError` carries them all. No message
holds a secret: secret fields are never quoted, and every value read for one is redacted from
the messages as a last line of defence; the values are also handed to the log pipeline
(:func:`syncd.logs.remember_secrets`), which hides them in every log line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path as FsPath
from typing import Any, TypeVar
from urllib.parse import quote

import structlog
from pydantic import BaseModel, SecretStr, ValidationError

from syncd.config.crosscheck import Loaded, check_app, check_dataset, check_unique
from syncd.config.interpolate import (
    Interpolator,
    Reference,
    Template,
    interpolate_document,
    is_url_field,
    secret_problem,
    userinfo_references,
)
from syncd.config.messages import LOADER_FIELDS, Leaf, iter_leaves, scalar_types, translate
from syncd.config.model import AppConfig, DatasetConfig
from syncd.config.positions import Document, Path, format_path, parse_yaml
from syncd.errors import ConfigError, ConfigIssue
from syncd.logs import remember_secrets

__all__ = ["config_issue", "load_config", "load_dataset_file"]

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

_DATASET_SUFFIXES = (".yaml", ".yml")
_NUMERIC = (int, float, bool, Decimal)
_REDACT_MIN = 4  # shorter values would blank out ordinary words; they are never quoted anyway


@dataclass
class _Session:
    """State shared by the files of one load: the interpolator, the issues, values to redact."""

    interpolator: Interpolator
    issues: list[ConfigIssue] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    referenced: set[str] = field(default_factory=set)  # values of the references that hold a secret
    files: list[str] = field(default_factory=list)  # in the order read: issues are reported so

    def remember(self) -> None:
        """Hand every secret value read to the log pipeline: no log line may show one."""
        remember_secrets(self.referenced | self.interpolator.secrets)

    def error(self) -> ConfigError:
        hidden = sorted((s for s in self.secrets | self.interpolator.secrets if len(s) >= _REDACT_MIN),
                        key=len, reverse=True)
        rank = {f: n for n, f in enumerate(self.files)}
        issues = []
        ordered = sorted(dict.fromkeys(self.issues), key=lambda i: (rank.get(i.file, -1), i.line, i.column))
        for issue in ordered:
            message = issue.message
            for secret in hidden:
                message = message.replace(secret, "***")
            issues.append(ConfigIssue(issue.file, issue.line, issue.column, issue.path, message))
        return ConfigError(issues)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> AppConfig:
    """Load the main file and every dataset file of its ``datasets_dir``; raises :class:`ConfigError`."""
    main = FsPath(path)
    session = _Session(Interpolator(os.environ if env is None else env))
    app, app_doc = _load(main, AppConfig, session)
    if app is not None and app_doc is not None:
        session.issues += check_app(app, app_doc)
    files = _dataset_files(main, app, app_doc, session)
    loaded = [item for f in files if (item := _load_dataset(f, session)) is not None]
    if app is not None:
        for item in loaded:
            if item.doc is not None:
                session.issues += check_dataset(item.dataset, app, item.doc)
    session.issues += check_unique(loaded)
    session.remember()
    if session.issues or app is None:
        raise session.error()
    datasets = {item.dataset.name: item.dataset for item in loaded}
    return app.model_copy(update={"datasets": datasets, "source_file": str(main)})


def load_dataset_file(
    path: str | os.PathLike[str], app: AppConfig, *, env: Mapping[str, str] | None = None
) -> DatasetConfig:
    """Load one dataset file against an already loaded ``app``; raises :class:`ConfigError`.

    Names and tables must not clash with ``app.datasets`` (other than one from this same file).
    """
    file = FsPath(path)
    session = _Session(Interpolator(os.environ if env is None else env))
    item = _load_dataset(file, session)
    if item is not None and item.doc is not None:
        session.issues += check_dataset(item.dataset, app, item.doc)
        others = [Loaded(ds, None) for ds in app.datasets.values() if not _same_file(ds.source_file, file)]
        session.issues += check_unique([*others, item])
    session.remember()
    if session.issues or item is None:
        raise session.error()
    return item.dataset


def _same_file(recorded: str, file: FsPath) -> bool:
    return bool(recorded) and FsPath(recorded).resolve() == file.resolve()


def _dataset_files(
    main: FsPath, app: AppConfig | None, app_doc: Document | None, session: _Session
) -> list[FsPath]:
    if app_doc is None:  # the main file is unreadable: its datasets_dir is unknown
        return []
    written = app_doc.data.get("datasets_dir") if isinstance(app_doc.data, dict) else None
    name = app.datasets_dir if app is not None else written if isinstance(written, str) else "datasets"
    directory = main.parent / name
    try:
        if not directory.is_dir():
            session.issues.append(app_doc.issue(("datasets_dir",), (
                f"the datasets directory {directory} does not exist: create it and put one YAML file per "
                "dataset in it, or set `datasets_dir:` (relative to this file)")))
            return []
        files = sorted(  # no editor leftovers
            p for p in directory.iterdir()
            if p.suffix in _DATASET_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    except OSError as exc:  # e.g. made with umask 077: the service's user may not list or enter it
        session.issues.append(app_doc.issue(("datasets_dir",), (
            f"cannot read the datasets directory {directory}: {exc.strerror}; the user syncd runs as must be "
            f"able to list and enter it (under systemd, a dynamic user: `chmod 0755 {directory}` and 0644 "
            "for its files)")))
        return []
    if not files:
        log.warning("config.no_datasets", directory=str(directory))
    return files


def config_issue(
    file: str, path: Path, message: str, *, unnamed: str = "the configuration file", on_key: bool = False
) -> ConfigIssue:
    """An issue with ``path`` of ``file`` found after the load (a source's probe of its front-end
    table, an auth scheme built for a run): the file is read again for the line ``path`` (or its
    nearest written ancestor) is on; line 0 when the file can no longer be read, and ``unnamed``
    stands for the file when the configuration was not loaded from one (``file`` empty). ``on_key``:
    the position of the key itself rather than of its value."""
    if not file:
        return ConfigIssue(unnamed, 0, 0, format_path(path), message)
    try:
        doc = parse_yaml(_read(FsPath(file)), file)
    except ConfigError:
        return ConfigIssue(file, 0, 0, format_path(path), message)
    return doc.issue(path, message, on_key=on_key)


def _load_dataset(file: FsPath, session: _Session) -> Loaded | None:
    dataset, doc = _load(file, DatasetConfig, session, default_name=file.stem)
    return Loaded(dataset, doc) if dataset is not None and doc is not None else None


def _read(file: FsPath) -> str:
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(str(file), 0, 0, "", "file not found")]) from None
    except OSError as exc:
        message = f"cannot read the file: {exc.strerror}"
        raise ConfigError([ConfigIssue(str(file), 0, 0, "", message)]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([ConfigIssue(str(file), line, column, "", (
            "the file is not UTF-8 text (GBK/GB18030?): save it as UTF-8 in your editor"))]) from None


def _load(
    file: FsPath, model: type[M], session: _Session, *, default_name: str | None = None
) -> tuple[M | None, Document | None]:
    """Read, interpolate, check secrets and validate one file. Issues go to ``session``."""
    session.files.append(str(file))
    try:
        doc = parse_yaml(_read(file), str(file))
    except ConfigError as exc:
        session.issues += exc.issues
        return None, None
    data: dict[str, Any] = doc.data
    interpolated = interpolate_document(doc, session.interpolator)
    issues = list(interpolated.issues)
    skip = set(interpolated.failed)  # paths with an issue already: pydantic's repeat is dropped
    for key in LOADER_FIELDS.get(model, frozenset()) & data.keys():
        del data[key]
        issues.append(doc.issue((key,), f"unknown key `{key}`: syncd fills it in itself, remove it",
                                on_key=True))
    named_after_file = default_name is not None and "name" not in data
    if named_after_file:
        data["name"] = default_name
    secret_paths: set[Path] = set()
    for leaf in iter_leaves(model, data):
        types = scalar_types(leaf.annotation)
        if SecretStr in types:
            secret_paths.add(leaf.path)
            if leaf.path not in interpolated.failed:
                _check_secret(leaf, interpolated.templates.get(leaf.path), doc=doc, session=session,
                              issues=issues, skip=skip)
        elif str in types and not types & set(_NUMERIC) and isinstance(leaf.value, _NUMERIC):
            _replace(data, leaf.path, doc.scalar_text.get(leaf.path, str(leaf.value)))
    result: M | None = None
    try:
        result = model.model_validate(
            {**data, "source_file": str(file)} if default_name else data,
            context={"config_dir": file.parent},  # relative file names (ca_bundle) are relative to it
        )
    except ValidationError as exc:
        issues += translate(doc, model, exc.errors(), skip=skip, secrets=secret_paths)
    if named_after_file:
        issues = [_explain_name(i, default_name or "") if i.path == "name" else i for i in issues]
    session.issues += issues
    return (None if issues else result), doc


def _check_secret(
    leaf: Leaf, template: Template | None, *, doc: Document, session: _Session, issues: list[ConfigIssue],
    skip: set[Path],
) -> None:
    """A secret field must be filled by interpolation, with something; remember its values for redaction."""
    url = leaf.field is not None and is_url_field(leaf.field)
    problem = secret_problem(template, leaf.value, url=url)
    if problem:
        issues.append(doc.issue(leaf.path, problem))
        skip.add(leaf.path)
    if isinstance(leaf.value, str):
        session.secrets.add(leaf.value)
    # the references that hold the secret: in a URL, those of its user info (or the whole URL)
    parts = template or ()
    holding = userinfo_references(parts) if url and len(parts) > 1 else range(len(parts))
    for index, part in enumerate(parts):
        if not isinstance(part, Reference):
            continue
        value = session.interpolator.render((part,))
        encoded = quote(value, safe="")
        session.secrets.update((value, encoded))  # alone, and as encoded inside a URL
        if index not in holding or part.default is not None:
            continue  # e.g. a URL's ${DB_HOST}: not a secret, may be shown in logs
        session.referenced.update((value, encoded))
        if not value and not problem:
            issues.append(doc.issue(leaf.path, _empty_secret(part, leaf.field or format_path(leaf.path))))
            skip.add(leaf.path)
            problem = "empty"


def _empty_secret(ref: Reference, name: str) -> str:
    if ref.credential:
        return (
            f"the credential {ref.name} is empty (the file $CREDENTIALS_DIRECTORY/{ref.name}, loaded by the "
            f"unit's LoadCredential={ref.name}:…): an empty {name} is never what was meant; write the secret "
            f"into /etc/syncd/credentials/{ref.name} (see docs/systemd.md), or stop referring to it"
        )
    return (
        f"the environment variable {ref.name} is set but empty: an empty {name} is never what was meant; "
        f"set it to the secret (e.g. in /etc/syncd/syncd.env, the unit's EnvironmentFile=)"
    )


def _replace(data: Any, path: Path, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _explain_name(issue: ConfigIssue, stem: str) -> ConfigIssue:
    return ConfigIssue(issue.file, issue.line, issue.column, issue.path, (
        f"the file has no `name:`, so the dataset is named after the file, `{stem}`: {issue.message}; "
        "rename the file or add `name:`"))
