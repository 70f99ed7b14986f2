"""Score a Redis stream continuously: consumer groups, micro-batches, acknowledged results.

A consumer reads up to `batch_size` messages for its group, scores them with one
`Scorer.score` call, writes one result per message to the sink stream and only then
acknowledges them. When source and sink are on the same Redis database, results and
acknowledgement go in one MULTI/EXEC, so no crash can separate them; otherwise a crash
between the two re-delivers and the result carries `source_id` for deduplication.
A restart finishes the consumer's own pending entries first, and entries that a
vanished consumer left pending are claimed after `claim_idle`. See docs/streaming.md.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import pyarrow as pa
import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.backoff import NoBackoff
from redis.exceptions import AuthorizationError
from redis.retry import Retry

from shipyard.batch.model import ERROR, ModelSpec, Scorer
from shipyard.errors import InvalidInput, ShipyardError

log = logging.getLogger("shipyard.stream")

URI_SHAPE = "redis://[user:password@]host:port[/DB]/STREAM"
JSON_FIELD = "json"
"""A message with this field holds its whole row as one JSON object."""
SOURCE_ID = "source_id"
RESERVED_FIELDS = (SOURCE_ID, "model", "version", ERROR)
_ID_COLUMN = "__shipyard_source_id__"
_START_ID = re.compile(r"^(\$|\d+(-\d+)?)$")
_PAUSE_CHECK_SECONDS = 0.2


class StreamUnavailable(ShipyardError):
    """Redis could not be reached again within the reconnect time."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


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
        texts = {_decoded(k): _decoded(v) for k, v in (fields or {}).items()}
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


def _decoded(value: bytes | str) -> str:
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
    spec: ModelSpec,
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


def backoff_delay(attempt: int) -> float:
    """Seconds before reconnect attempt `attempt` (0-based): 0.1, 0.2, 0.4 … at most 5."""
    return float(min(0.1 * 2 ** min(attempt, 10), 5.0))


@dataclass
class StreamSummary:
    messages: int = 0
    """Messages answered: results plus errors."""
    results: int = 0
    errors: int = 0
    given_up: int = 0
    """Errors written because a message reached --max-deliveries (also in `errors`)."""
    batches: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0
    """Time spent scoring and writing, for a rate that idle waiting does not dilute."""

    @property
    def rate(self) -> float:
        """Messages per busy second."""
        return self.messages / self.busy_seconds if self.busy_seconds > 0 else 0.0

    def fields(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "results": self.results,
            "errors": self.errors,
            "given_up": self.given_up,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "busy_seconds": round(self.busy_seconds, 3),
            "messages_per_second": round(self.rate, 1),
        }


class StreamConsumer:
    """Reads, scores, writes and acknowledges until stopped: one per process."""

    def __init__(
        self, spec: ModelSpec, options: StreamOptions, outputs: Sequence[str] | None = None
    ) -> None:
        self.spec = spec
        self.options = options
        self.outputs = outputs
        self.group = options.group or f"shipyard-{spec.model}"
        self.summary = StreamSummary()
        self._scorer: Scorer | None = None
        self._stopping = False
        self._clients: dict[tuple[bool, str, int, int, str | None], redis.Redis] = {}
        for address in (options.source, options.sink, options.errors_sink or options.sink):
            if address.server not in self._clients:
                self._clients[address.server] = _client(address, options)
        self._source = self._clients[options.source.server]
        self._recovering = True
        self._next_claim = 0.0
        self._paused = False
        self._last_activity = time.monotonic()

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`.

        Only sets a flag: safe in a signal handler, where taking a lock (as
        `threading.Event.set` does) could deadlock against the interrupted code.
        """
        self._stopping = True

    def run(self) -> StreamSummary:
        """Consume until stopped, --max-messages or --idle-exit; reconnect with backoff."""
        started = time.monotonic()
        self._last_activity = started
        outage_since: float | None = None
        attempt = 0
        log.info("stream consumer started", extra={"fields": self._describe()})
        while not self._stopping:
            try:
                self._step()
            except (redis.AuthenticationError, AuthorizationError) as exc:
                raise InvalidInput(f"Redis refused this consumer: {exc}") from None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                now = time.monotonic()
                if outage_since is None:
                    outage_since, attempt = now, 0
                    log.warning("lost the connection to Redis (%s); reconnecting", exc)
                delay = backoff_delay(attempt)
                attempt += 1
                if now - outage_since + delay > self.options.reconnect_timeout:
                    raise StreamUnavailable(
                        f"gave up on Redis after {now - outage_since:.1f}s of reconnecting "
                        f"(--reconnect-timeout {self.options.reconnect_timeout:g}): {exc}"
                    ) from None
                self._recovering = True  # the batch in hand may or may not have been acked
                self._wait(delay)
                continue
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("group %s is gone (Redis restarted?); creating it again", self.group)
                self._recovering = True
                continue
            if outage_since is not None:
                log.info("reconnected to Redis after %.1fs", time.monotonic() - outage_since)
                outage_since = None
        self.summary.seconds = time.monotonic() - started
        log.info("stream consumer stopped", extra={"fields": self.summary.fields()})
        return self.summary

    def _step(self) -> None:
        if self._recovering:
            self._prepare()
            self._recover_own()
            self._recovering = False
        elif time.monotonic() >= self._next_claim:
            if self._claim_stale():
                self._recover_own()
            self._next_claim = time.monotonic() + self.options.claim_idle
        elif not self._sink_full():
            self._read_new()

    def _loaded_scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = Scorer(self.spec, self.outputs)
        return self._scorer

    def _prepare(self) -> None:
        """Check every key is a stream (or absent); create the group; load the model.

        The model loads once Redis has answered, so a wrong address fails in a second
        rather than after the model's import time.
        """
        outputs = [self.options.sink, self.options.errors_sink or self.options.sink]
        for address in (self.options.source, *outputs):
            kind = _decoded(self._clients[address.server].type(address.stream))
            if kind not in ("stream", "none"):
                raise InvalidInput(f"{address} holds a Redis {kind}, not a stream")
        try:
            self._source.xgroup_create(
                self.options.source.stream, self.group, id=self.options.start_id, mkstream=True
            )
            log.info("created group %s on %s", self.group, self.options.source)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._loaded_scorer()
        self._last_activity = time.monotonic()  # loading the model is not idleness

    def _read_new(self) -> None:
        wanted = self.options.batch_size
        if self.options.max_messages is not None:
            wanted = min(wanted, self.options.max_messages - self.summary.messages)
        response: Any = self._source.xreadgroup(
            self.group,
            self.options.consumer,
            {self.options.source.stream: ">"},
            count=wanted,
            block=self.options.max_wait_ms,
        )
        entries = _entries(response[0][1]) if response else []
        idle_exit = self.options.idle_exit
        if entries:
            self._handle(entries)
        elif idle_exit is not None and time.monotonic() - self._last_activity >= idle_exit:
            log.info("nothing arrived for %ss: stopping", idle_exit)
            self.stop()

    def _recover_own(self) -> None:
        """Finish entries this consumer read but never acknowledged, one at a time.

        One at a time so that a delivery counts only against the entry in hand: a
        message that kills the consumer reaches --max-deliveries alone and is
        answered with an error, instead of taking its batch-mates with it.
        """
        stream, consumer = self.options.source.stream, self.options.consumer
        while not self._stopping:
            pending = _pending(
                self._source.xpending_range(
                    stream, self.group, "-", "+", self.options.batch_size, consumername=consumer
                )
            )
            if not pending:
                return
            for entry in pending:
                if self._stopping:
                    return
                if entry.deliveries >= self.options.max_deliveries:
                    self._give_up(entry)
                    continue
                claimed = _entries(self._source.xclaim(stream, self.group, consumer, 0, [entry.id]))
                if claimed:
                    self._handle(claimed)
                else:  # deleted from the stream since it was read: nothing to answer
                    self._source.xack(stream, self.group, entry.id)

    def _claim_stale(self) -> int:
        """Take over entries other consumers left pending for longer than --claim-idle.

        XPENDING's IDLE filter pages by id and XCLAIM JUSTID leaves delivery counts
        alone (XAUTOCLAIM's cursor is lost by redis-py when JUSTID is given).
        """
        stream, consumer = self.options.source.stream, self.options.consumer
        idle_ms = int(self.options.claim_idle * 1000)
        start, claimed = "-", 0
        while True:
            stale = _pending(
                self._source.xpending_range(
                    stream, self.group, start, "+", self.options.batch_size, idle=idle_ms
                )
            )
            others: list[str | bytes | int | memoryview] = [
                e.id for e in stale if e.consumer != consumer
            ]
            if others:
                taken = self._source.xclaim(
                    stream, self.group, consumer, idle_ms, others, justid=True
                )
                claimed += len(taken)
                log.info("claimed %d entries left pending by other consumers", len(taken))
            if len(stale) < self.options.batch_size:
                return claimed
            start = "(" + stale[-1].id

    def _give_up(self, entry: _Pending) -> None:
        found = _entries(self._source.xrange(self.options.source.stream, entry.id, entry.id))
        if not found:
            self._source.xack(self.options.source.stream, self.group, entry.id)
            return
        message = read_message(entry.id, found[0][1], self.options.id_field)
        reason = (
            f"gave up after {entry.deliveries} deliveries: the consumer stopped while scoring it"
        )
        log.error("message %s: %s", message.id, reason)
        fields = result_fields(message, self.options.id_field, self.spec, None, reason)
        self._write([(fields, True)], [message.id])
        self.summary.given_up += 1
        self._count(errors=1)

    def _handle(self, entries: Sequence[tuple[Any, Any]]) -> None:
        messages = [read_message(i, f, self.options.id_field) for i, f in entries]
        started = time.monotonic()
        outcomes = score_messages(self._loaded_scorer(), messages)
        answers = [
            (result_fields(m, self.options.id_field, self.spec, values, error), error is not None)
            for m, (values, error) in zip(messages, outcomes, strict=True)
        ]
        self._write(answers, [m.id for m in messages])
        self.summary.batches += 1
        self.summary.busy_seconds += time.monotonic() - started
        failed = sum(1 for _, is_error in answers if is_error)
        self._count(errors=failed, results=len(answers) - failed)

    def _count(self, errors: int = 0, results: int = 0) -> None:
        self.summary.messages += errors + results
        self.summary.errors += errors
        self.summary.results += results
        self._last_activity = time.monotonic()
        if self.options.max_messages and self.summary.messages >= self.options.max_messages:
            self.stop()

    def _write(self, answers: Sequence[tuple[dict[str, str], bool]], ids: Sequence[str]) -> None:
        """Results (in message order) to their streams, then the acknowledgement.

        Writes to other servers go first; the source server's writes and the XACK go
        in one MULTI/EXEC, so nothing there is acknowledged without its result.
        """
        errors_to = self.options.errors_sink or self.options.sink
        by_server: dict[Any, list[tuple[str, dict[Any, Any]]]] = {}  # redis-py: Dict[FieldT, …]
        for answer, is_error in answers:
            address = errors_to if is_error else self.options.sink
            by_server.setdefault(address.server, []).append((address.stream, answer))
        for server, writes in by_server.items():
            if server != self.options.source.server:
                pipe = self._clients[server].pipeline(transaction=False)
                for stream, fields in writes:
                    pipe.xadd(stream, fields)
                pipe.execute()
        transaction = self._source.pipeline(transaction=True)
        for stream, fields in by_server.get(self.options.source.server, []):
            transaction.xadd(stream, fields)
        transaction.xack(self.options.source.stream, self.group, *ids)
        replies = transaction.execute(raise_on_error=False)
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        if failed:
            # MULTI/EXEC does not roll back: the acknowledgement went through. The
            # startup check that every key is a stream makes this rare; say it loudly.
            raise ShipyardError(
                f"{len(failed)} result(s) could not be written ({failed[0]}) and their "
                f"messages were acknowledged: {', '.join(ids[:10])}"
            )

    def _sink_full(self) -> bool:
        """Backpressure: while the sink holds --max-sink-length entries, wait instead of reading."""
        limit = self.options.max_sink_length
        if limit is None:
            return False
        sink = self.options.sink
        length = self._clients[sink.server].xlen(sink.stream)
        if length < limit:
            if self._paused:
                log.info("resumed: %s holds %d entries (limit %d)", sink, length, limit)
                self._paused = False
            return False
        if not self._paused:
            log.warning("paused: %s holds %d entries (limit %d)", sink, length, limit)
            self._paused = True
        self._last_activity = time.monotonic()  # waiting on the sink is not idleness
        self._wait(_PAUSE_CHECK_SECONDS)
        return True

    def _wait(self, seconds: float) -> None:
        """Sleep, in slices short enough that a stop request is heard promptly."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def _describe(self) -> dict[str, Any]:
        return {
            "model": self.spec.ref,
            "source": str(self.options.source),
            "sink": str(self.options.sink),
            "group": self.group,
            "consumer": self.options.consumer,
            "transactional": self.options.sink.server == self.options.source.server,
        }


@dataclass(frozen=True)
class _Pending:
    id: str
    consumer: str
    deliveries: int


def _pending(reply: Any) -> list[_Pending]:
    """XPENDING's extended form, typed."""
    return [
        _Pending(_decoded(e["message_id"]), _decoded(e["consumer"]), int(e["times_delivered"]))
        for e in reply
    ]


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """Stream entries as (id, fields) pairs, whichever command answered them."""
    return [(entry_id, fields) for entry_id, fields in reply]


def _client(address: StreamAddress, options: StreamOptions) -> redis.Redis:
    """A client that never retries by itself: a retried MULTI/EXEC could write twice."""
    return redis.Redis(
        host=address.host,
        port=address.port,
        db=address.db,
        username=address.username,
        password=address.password,
        ssl=address.tls,
        socket_timeout=options.max_wait_ms / 1000 + 10,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), 0),
        client_name=re.sub(r"[^\w.:-]", "-", f"shipyard-stream-{options.consumer}")[:64],
    )
