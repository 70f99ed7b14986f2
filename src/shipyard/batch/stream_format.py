"""The stream consumer's formats, free of Redis calls: what it parses, reads and writes.

Stream URIs (passwords masked in errors), the consumer's options, stream entries decoded
into rows and scored, and results encoded as sink fields. Kept apart from the consumer
loop in stream.py so the CLI checks its options, and tests check these rules, with no
Redis server.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shipyard.batch.model import ERROR, Scorer
from shipyard.errors import InvalidInput
from shipyard.runtimes.base import VersionSpec

URI_SHAPE = "redis://[user:password@]host:port[/DB]/STREAM"
JSON_FIELD = "json"
"""A message with this field holds its whole row as one JSON object."""
SOURCE_ID = "source_id"
RESERVED_FIELDS = (SOURCE_ID, "model", "version", ERROR)
_ID_COLUMN = "__shipyard_source_id__"
_START_ID = re.compile(r"^(\$|\d+(-\d+)?)$")


@dataclass(frozen=True)
class StreamAddress:
    """One stream on one Redis database, parsed from `URI_SHAPE`."""

    host: str
    port: int
    db: int
    stream: str
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def server(self) -> tuple[bool, str, int, int, str | None]:
        """Streams with equal `server` share a connection, hence one transaction."""
        return (self.tls, self.host.lower(), self.port, self.db, self.username)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}/{self.stream}"


def parse_stream_uri(text: str, what: str = "stream") -> StreamAddress:
    """`redis://[user:password@]host:port[/DB]/STREAM` (or `rediss://` for TLS)."""
    parts = urlsplit(text)
    shown = _without_password(text)

    def refuse(problem: str) -> InvalidInput:
        return InvalidInput(f"{what} {shown!r} {problem}; expected {URI_SHAPE}")

    if parts.scheme not in ("redis", "rediss"):
        raise refuse("is not a redis:// or rediss:// URI")
    if parts.query or parts.fragment:
        raise refuse("has a ?query or #fragment, which stream URIs do not take")
    try:
        port = parts.port or 6379
    except ValueError:
        raise refuse("has an invalid port") from None
    if not parts.hostname:
        raise refuse("names no host")
    segments = parts.path.split("/")[1:] if parts.path else []
    if len(segments) == 2 and segments[0].isdigit():
        db, stream = int(segments[0]), segments[1]
    elif len(segments) == 1:
        db, stream = 0, segments[0]
    else:
        raise refuse("must end in /STREAM or /DB/STREAM (DB a number)")
    if not stream:
        raise refuse("names no stream")
    return StreamAddress(
        host=parts.hostname,
        port=port,
        db=db,
        stream=unquote(stream),
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _without_password(text: str) -> str:
    """The URI with its password masked, split where `urlsplit` splits (the last `@`)."""
    scheme, separator, rest = text.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    return f"{scheme}{separator}{userinfo.split(':', 1)[0]}:***@{host}{slash}{path}"


class StreamOptions(BaseModel):
    """How a consumer reads, batches, writes and recovers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: StreamAddress
    sink: StreamAddress
    errors_sink: StreamAddress | None = Field(None, description="Rejected rows; else the sink.")
    group: str | None = Field(None, min_length=1, description="Default: shipyard-MODEL.")
    consumer: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Stable across restarts, so a restart finds its own pending entries.",
    )
    start_id: str = Field("0", pattern=_START_ID.pattern, description="Where a new group starts.")
    id_field: str | None = Field(None, min_length=1, description="Copied from input to result.")
    batch_size: int = Field(256, ge=1, le=10_000)
    max_wait_ms: int = Field(1000, ge=1, le=60_000, description="How long a read blocks.")
    max_sink_length: int | None = Field(None, ge=1, description="Pause while the sink is full.")
    claim_idle: float = Field(60.0, gt=0, description="Claim others' entries idle this long.")
    max_deliveries: int = Field(5, ge=1, description="Then a message is answered with an error.")
    max_messages: int | None = Field(None, ge=1, description="Stop after this many.")
    idle_exit: float | None = Field(None, gt=0, description="Stop after this long with nothing.")
    reconnect_timeout: float = Field(60.0, ge=0, description="Give up on Redis after this long.")


def stream_options(**values: Any) -> StreamOptions:
    """`StreamOptions`, with problems reported as the CLI option that caused them."""
    if values.get("id_field") in RESERVED_FIELDS:
        raise InvalidInput(f"--id-field cannot be {values['id_field']!r}: results use that field")
    try:
        return StreamOptions(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(problems) from None


@dataclass
class Message:
    """One stream entry as a row of text values, or the reason it cannot be one."""

    id: str
    columns: dict[str, str | None]
    key: str | None = None
    """The value of --id-field, copied to the result."""
    problem: str | None = None


def read_message(entry_id: bytes | str, fields: Mapping[Any, Any], id_field: str | None) -> Message:
    """Fields as columns, or the object in the `json` field as columns."""
    message_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    try:
        texts = {decoded(k): decoded(v) for k, v in (fields or {}).items()}
    except UnicodeDecodeError:
        return Message(message_id, {}, problem="a field name or value is not UTF-8 text")
    key = texts.pop(id_field, None) if id_field else None
    if JSON_FIELD not in texts:
        return Message(message_id, dict(texts), key)
    try:
        document = orjson.loads(texts[JSON_FIELD])
    except orjson.JSONDecodeError as exc:
        return Message(message_id, {}, key, f"the json field is not JSON: {exc}")
    if not isinstance(document, dict):
        return Message(message_id, {}, key, "the json field must hold an object of column: value")
    if id_field and id_field in document:  # the message's own field wins over the object's
        inner_key = _text(document.pop(id_field))
        key = key if key is not None else inner_key
    columns: dict[str, str | None] = {}
    for name, value in document.items():
        if isinstance(value, dict | list):
            return Message(message_id, {}, key, f"{name}: nested values are not supported")
        columns[name] = _text(value)
    return Message(message_id, columns, key)


def decoded(value: bytes | str) -> str:
    """Text from a Redis reply, which stays bytes so that bad UTF-8 is caught per message."""
    return value.decode() if isinstance(value, bytes) else value


def _text(value: object) -> str | None:
    """A scalar as text, both ways: JSON inputs for the Scorer to cast, outputs for the sink.

    Floats take Python's shortest round-trip form; booleans are `true`/`false` as in
    JSON (and as Arrow casts them), not Python's `True`.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def score_messages(
    scorer: Scorer, messages: Sequence[Message]
) -> list[tuple[dict[str, Any] | None, str | None]]:
    """Per message, in order: its output values, or why it has none.

    One score call per field layout: a batch usually has one, and grouping keeps a
    message with other fields from changing how its neighbours are read.
    """
    outcomes: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    layouts: dict[tuple[str, ...], list[Message]] = {}
    for message in messages:
        if message.problem is not None:
            outcomes[message.id] = (None, message.problem)
        else:
            layouts.setdefault(tuple(message.columns), []).append(message)
    for names, group in layouts.items():
        columns = {_ID_COLUMN: pa.array([m.id for m in group], type=pa.string())}
        for name in names:
            columns[name] = pa.array([m.columns[name] for m in group], type=pa.string())
        try:
            scored = scorer.score(pa.table(columns), [_ID_COLUMN])
        except InvalidInput as exc:  # the layout itself does not fit the model
            outcomes.update({m.id: (None, exc.message) for m in group})
            continue
        for row in scored.output.to_pylist():
            outcomes[row.pop(_ID_COLUMN)] = (row, None)
        for row in scored.errors.to_pylist():
            outcomes[row[_ID_COLUMN]] = (None, row[ERROR])
    return [outcomes[m.id] for m in messages]


def result_fields(
    message: Message,
    id_field: str | None,
    spec: VersionSpec,
    values: Mapping[str, Any] | None,
    error: str | None,
) -> dict[str, str]:
    """The sink entry for one message: who it answers, which model, and values or error."""
    fields = {SOURCE_ID: message.id}
    if id_field and message.key is not None:
        fields[id_field] = message.key
    fields["model"] = spec.model
    fields["version"] = str(spec.version)
    if error is not None:
        fields[ERROR] = error
    else:
        fields.update({name: _text(value) or "" for name, value in (values or {}).items()})
    return fields
