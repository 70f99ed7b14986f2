"""Score a Redis stream continuously: consumer groups, micro-batches, acknowledged results.

A consumer reads up to `batch_size` messages for its group, scores them with one
`Scorer.score` call, writes one result per message to the sink stream and only then
acknowledges them. When source and sink are on the same Redis database, results and
acknowledgement go in one MULTI/EXEC, so no crash can separate them; otherwise a crash
between the two re-delivers and the result carries `source_id` for deduplication.
A restart finishes the consumer's own pending entries first, and entries that a
vanished consumer left pending are claimed after `claim_idle`. See docs/streaming.md.
The Redis-free parts (URIs, options, message and result formats) are in stream_format.py.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthorizationError
from redis.retry import Retry

from shipyard.batch.model import Scorer
from shipyard.batch.stream_format import (
    StreamAddress,
    StreamOptions,
    decoded,
    read_message,
    result_fields,
    score_messages,
)
from shipyard.errors import InvalidInput, ShipyardError, StreamUnavailable
from shipyard.runtimes.base import VersionSpec

log = logging.getLogger("shipyard.stream")

_PAUSE_CHECK_SECONDS = 0.2


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
        self, spec: VersionSpec, options: StreamOptions, outputs: Sequence[str] | None = None
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
            kind = decoded(self._clients[address.server].type(address.stream))
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
            "model": self.spec.key,
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
        _Pending(decoded(e["message_id"]), decoded(e["consumer"]), int(e["times_delivered"]))
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
