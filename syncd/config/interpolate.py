"""``${VAR}`` interpolation in configuration values, and the rule that secrets come only from it.

Every string value (not key) of a document is a template:

- ``${VAR}``: the environment variable VAR; unset → error telling the operator where to set it;
- ``${VAR:-default}``: VAR, or ``default`` when VAR is unset or empty (shell semantics);
- ``${credential:NAME}``: the file ``$CREDENTIALS_DIRECTORY/NAME`` (systemd ``LoadCredential=``),
  one trailing newline stripped; a file readable by group or others is logged as a warning;
- ``$${`` is a literal ``${``; a ``$`` not followed by ``{`` is kept as it is.

In a URL-valued field (``url`` or a name ending in ``_url``), a reference written in the URL's
user info (``scheme://${USER}:${PASSWORD}@host``) is percent-encoded (:func:`userinfo_references`):
a password is written as it is, and an ``@``, ``:``, ``/`` or ``%`` in it stays part of the password.

:func:`secret_problem` decides whether the template written in a secret field really keeps the
secret out of the file: only references, without defaults; a database URL may be literal as
long as it carries no password.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any
from urllib.parse import quote

import structlog

from syncd.config.positions import Document, Path
from syncd.errors import ConfigIssue

__all__ = [
    "Interpolated",
    "InterpolationError",
    "Interpolator",
    "Reference",
    "Template",
    "interpolate_document",
    "is_url_field",
    "parse_template",
    "secret_problem",
    "userinfo_references",
]

log = structlog.get_logger(__name__)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # a file name: no slash
_URL_AUTH = re.compile(r"^[\w+.\-]+://(?:(?P<user>[^:/]*)(?::(?P<password>[^@]*))?@)?")
_URL_QUERY_PASSWORD = re.compile(r"[?&](?:password|passwd|pwd)=([^&#]*)", re.IGNORECASE)
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")

LITERAL_MESSAGE = (
    "secrets must not be written into configuration files: put it in an environment variable "
    "and write ${NAME}, or in a systemd credential and write ${credential:NAME}"
)
DEFAULT_MESSAGE = (
    "a `:-` default of a secret is itself a secret written into the file: remove the default and "
    "set the variable, or use ${credential:NAME}"
)
URL_MESSAGE = (
    "the database URL contains a password: secrets must not be written into configuration files; "
    "write the password as ${NAME} (e.g. postgresql+psycopg://syncd:${SYNCD_DB_PASSWORD}@127.0.0.1/syncd) "
    "or the whole URL as ${credential:NAME}"
)
_SYNTAX_HELP = "write ${NAME}, ${NAME:-default} or ${credential:NAME}, or $${ for a literal ${"


class InterpolationError(ValueError):
    """A template is malformed or refers to something that is not there."""


@dataclass(frozen=True, slots=True)
class Reference:
    """One ``${...}`` in a template."""

    name: str
    default: str | None = None
    credential: bool = False


Template = tuple[str | Reference, ...]
"""Literal text and references, in order."""


def parse_template(text: str) -> Template:
    """Split ``text`` into literal parts and references; raises :class:`InterpolationError`."""
    parts: list[str | Reference] = []
    literal = ""
    i = 0
    while (j := text.find("$", i)) >= 0:
        literal += text[i:j]
        if text.startswith("$${", j):
            literal += "${"
            i = j + 3
        elif text.startswith("${", j):
            end = text.find("}", j + 2)
            if end < 0:
                raise InterpolationError(f"`${{` is not closed with `}}`: {_SYNTAX_HELP}")
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(_reference(text[j + 2 : end]))
            i = end + 1
        else:
            literal += "$"
            i = j + 1
    literal += text[i:]
    if literal:
        parts.append(literal)
    return tuple(parts)


def _reference(body: str) -> Reference:
    if body.startswith("credential:"):
        name = body[len("credential:") :]
        if not _CREDENTIAL_NAME.fullmatch(name):
            raise InterpolationError(
                "`${credential:...}` needs the credential's name, made of letters, digits, `_`, `.` "
                "and `-` (the ID in the unit's LoadCredential=ID:/path)"
            )
        return Reference(name, credential=True)
    name, sep, default = body.partition(":-")
    if not _NAME.fullmatch(name):
        shown = name.split(":", 1)[0][:40]
        raise InterpolationError(
            f"malformed `${{{shown}...}}`: variable names use letters, digits and `_` and do not start "
            f"with a digit; {_SYNTAX_HELP}"
        )
    if "${" in default:
        raise InterpolationError(f"a `:-` default cannot contain another `${{...}}`: {_SYNTAX_HELP}")
    return Reference(name, default if sep else None)


def is_url_field(name: str | int) -> bool:
    """True for the names of URL-valued fields: ``url`` and ``*_url`` (``base_url``…)."""
    return isinstance(name, str) and (name == "url" or name.endswith("_url"))


def userinfo_references(template: Template) -> frozenset[int]:
    """Indexes in ``template`` of the references written in the user info of a URL (``user:password@``).

    Only the literal text decides where the user info is (a reference's value may hold any character):
    after ``scheme://``, up to the last ``@`` before the first ``/``, ``?`` or ``#``.
    """
    masked = "".join(p if isinstance(p, str) else "\x00" for p in template)  # a reference is one \0
    scheme = _URL_SCHEME.match(masked)
    if scheme is None:
        return frozenset()
    start = scheme.end()
    authority_end = min((i for c in "/?#" if (i := masked.find(c, start)) >= 0), default=len(masked))
    at = masked.rfind("@", start, authority_end)
    if at < 0:
        return frozenset()
    found, offset = set(), 0
    for index, part in enumerate(template):
        if isinstance(part, str):
            offset += len(part)
            continue
        if start <= offset < at:
            found.add(index)
        offset += 1
    return frozenset(found)


@dataclass
class Interpolator:
    """Renders templates against an environment; remembers what it read from credentials."""

    env: Mapping[str, str]
    secrets: set[str] = field(default_factory=set)
    _credentials: dict[str, str] = field(default_factory=dict)

    def render(self, template: Template, *, quoted: Set[int] = frozenset()) -> str:
        """The text of ``template``; the references at the indexes ``quoted`` are percent-encoded."""
        out: list[str] = []
        for index, part in enumerate(template):
            if isinstance(part, str):
                out.append(part)
                continue
            value = self._credential(part.name) if part.credential else self._variable(part)
            out.append(quote(value, safe="") if index in quoted else value)
        return "".join(out)

    def _variable(self, ref: Reference) -> str:
        value = self.env.get(ref.name)
        if ref.default is not None and not value:
            return ref.default
        if value is None:
            raise InterpolationError(
                f"environment variable {ref.name} is not set: export it (e.g. in /etc/syncd/syncd.env "
                f"used by the systemd unit's EnvironmentFile=) or write ${{{ref.name}:-default}}"
            )
        return value

    def _credential(self, name: str) -> str:
        if name in self._credentials:
            return self._credentials[name]
        directory = self.env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise InterpolationError(
                f"${{credential:{name}}} needs CREDENTIALS_DIRECTORY, which is not set: run syncd from "
                f"its systemd unit with LoadCredential={name}:/etc/syncd/credentials/{name} "
                "(or set CREDENTIALS_DIRECTORY to the directory that holds the file)"
            )
        path = FsPath(directory) / name
        try:
            mode = path.stat().st_mode
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InterpolationError(
                f"credential {name} not found: there is no file {path} (CREDENTIALS_DIRECTORY); add "
                f"LoadCredential={name}:/path/to/file to the systemd unit"
            ) from None
        except OSError as exc:
            raise InterpolationError(f"credential file {path} cannot be read: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("config.credential_permissions", file=str(path), mode=oct(stat.S_IMODE(mode)),
                        hint="make it readable by its owner only (chmod 600 or 400)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InterpolationError(f"credential file {path} is not UTF-8 text") from None
        if text.endswith("\n"):
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
        self._credentials[name] = text
        if text:
            self.secrets.add(text)
        return text


@dataclass
class Interpolated:
    """What :func:`interpolate_document` found: the template of every value that had one."""

    templates: dict[Path, Template] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    failed: set[Path] = field(default_factory=set)  # values left as written, with an issue


def interpolate_document(doc: Document, interpolator: Interpolator) -> Interpolated:
    """Replace every templated string value of ``doc.data`` in place by its rendered text.

    The text as written goes to ``doc.written``. A reference in the user info of a URL-valued field
    is percent-encoded. A value that fails keeps its raw text and gets a positioned issue.
    """
    result = Interpolated()

    def visit(container: dict[str, Any] | list[Any], path: Path) -> None:
        keys: list[str | int] = [*container] if isinstance(container, dict) else [*range(len(container))]
        for key in keys:
            here = (*path, key)
            value = container[key]  # type: ignore[index]
            if isinstance(value, dict | list):
                visit(value, here)
            elif isinstance(value, str) and "$" in value:
                try:
                    template = parse_template(value)
                    if template != (value,):
                        quoted = userinfo_references(template) if is_url_field(key) else frozenset()
                        container[key] = interpolator.render(template, quoted=quoted)  # type: ignore[index]
                        result.templates[here] = template
                        doc.written[here] = value
                except InterpolationError as exc:
                    result.issues.append(doc.issue(here, str(exc)))
                    result.failed.add(here)

    if isinstance(doc.data, dict | list):
        visit(doc.data, ())
    return result


def secret_problem(template: Template | None, value: Any, *, url: bool) -> str | None:
    """Why ``value`` (written as ``template``, or literally when None) leaks a secret, or None.

    ``url``: the field is a database URL, which may be literal when it carries no password.
    """
    if value is None:
        return None
    if url:
        return URL_MESSAGE if _url_leaks(template, value) else None
    if template is None or any(isinstance(p, str) for p in template):
        return LITERAL_MESSAGE
    if any(isinstance(p, Reference) and p.default for p in template):
        return DEFAULT_MESSAGE
    return None


def _url_leaks(template: Template | None, value: Any) -> bool:
    if template is None:
        return not isinstance(value, str) or _has_password(value)
    # references stand in as \0 (\1 when they carry a default): only \0 may form the password
    masked = "".join(p if isinstance(p, str) else "\x01" if p.default else "\x00" for p in template)
    return _has_password(masked, allowed="\x00") or any(
        isinstance(p, Reference) and p.default and _has_password(p.default) for p in template
    )


def _has_password(url: str, *, allowed: str = "") -> bool:
    """True when the URL's password (userinfo or ``?password=``) holds characters not in ``allowed``."""
    passwords: list[str] = []
    m = _URL_AUTH.match(url)
    if m and m.group("password"):
        passwords.append(m.group("password"))
    passwords.extend(_URL_QUERY_PASSWORD.findall(url))
    return any(p.strip(allowed) for p in passwords)
