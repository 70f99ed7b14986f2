"""`shipyard stream run`: score messages from a Redis stream until stopped."""

from __future__ import annotations

from typing import Any

import typer

app = typer.Typer(help="Score messages from a stream continuously.", no_args_is_help=True)

_URI = r"redis://\[user:password@]host:port\[/DB]/STREAM"  # "\[": not Rich markup


@app.command("run")
def run(
    model: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    source: str = typer.Option(
        ..., envvar="SHIPYARD_STREAM_SOURCE", help=f"Stream to read: {_URI} (rediss:// for TLS)."
    ),
    sink: str = typer.Option(
        ..., envvar="SHIPYARD_STREAM_SINK", help="Stream the results are added to (same form)."
    ),
    errors_sink: str | None = typer.Option(
        None,
        envvar="SHIPYARD_STREAM_ERRORS_SINK",
        help="Stream for messages that could not be scored (default: the sink).",
    ),
    group: str | None = typer.Option(None, help="Consumer group (default: shipyard-MODEL)."),
    consumer: str | None = typer.Option(
        None, help="This consumer's name; keep it across restarts (default: the host name)."
    ),
    start_id: str | None = typer.Option(
        None,
        help="Where a new group starts: 0 (the whole stream), $ (new only) or an id (default: 0).",
    ),
    id_field: str | None = typer.Option(None, help="A message field copied into its result."),
    outputs: str | None = typer.Option(
        None, help="Model outputs to write, comma-separated (e.g. predict,predict_proba)."
    ),
    batch_size: int | None = typer.Option(
        None, help="Most messages scored at once (default: 256)."
    ),
    max_wait_ms: int | None = typer.Option(
        None, help="How long a read waits for messages (default: 1000)."
    ),
    max_sink_length: int | None = typer.Option(
        None, help="Pause reading while the sink holds this many entries (default: no limit)."
    ),
    claim_idle: float | None = typer.Option(
        None, help="Take over entries other consumers left pending this many seconds (default: 60)."
    ),
    max_deliveries: int | None = typer.Option(
        None, help="Answer a message with an error once delivered this many times (default: 5)."
    ),
    max_messages: int | None = typer.Option(None, help="Stop after this many messages."),
    idle_exit: float | None = typer.Option(
        None, help="Stop once nothing has arrived for this many seconds."
    ),
    reconnect_timeout: float | None = typer.Option(
        None, help="Give up when Redis stays unreachable this many seconds (default: 60)."
    ),
) -> None:
    """Score every message of a Redis stream: one result per message, added to the sink.

    Reads through a consumer group and acknowledges a message only once its result is
    written. SIGTERM or Ctrl-C finishes the batch in hand, then exits.
    """
    import signal

    from shipyard.batch.model import resolve_model
    from shipyard.batch.stream import StreamConsumer
    from shipyard.batch.stream_format import parse_stream_uri, stream_options
    from shipyard.client import LocalClient
    from shipyard.config import Settings
    from shipyard.logs import configure_logging

    settings = Settings()
    configure_logging(json_lines=settings.log_format == "json")
    given: dict[str, Any] = {
        "group": group,
        "consumer": consumer,
        "start_id": start_id,
        "id_field": id_field,
        "batch_size": batch_size,
        "max_wait_ms": max_wait_ms,
        "max_sink_length": max_sink_length,
        "claim_idle": claim_idle,
        "max_deliveries": max_deliveries,
        "max_messages": max_messages,
        "idle_exit": idle_exit,
        "reconnect_timeout": reconnect_timeout,
    }
    options = stream_options(
        source=parse_stream_uri(source, "--source"),
        sink=parse_stream_uri(sink, "--sink"),
        errors_sink=parse_stream_uri(errors_sink, "--errors-sink") if errors_sink else None,
        **{name: value for name, value in given.items() if value is not None},
    )
    registry = LocalClient.open(settings).registry
    try:
        spec = resolve_model(registry, model)
    finally:
        registry.close()
    wanted = [name.strip() for name in outputs.split(",") if name.strip()] if outputs else None
    stream_consumer = StreamConsumer(spec, options, wanted)

    def stop_after_batch(_signum: int, _frame: object) -> None:
        stream_consumer.stop()
        # A second signal acts at once; pending entries are finished on the next start.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGINT, stop_after_batch)
    signal.signal(signal.SIGTERM, stop_after_batch)
    summary = stream_consumer.run()
    typer.echo(
        f"{summary.messages} messages in {summary.batches} batches: {summary.results} results, "
        f"{summary.errors} errors ({summary.given_up} given up) in {summary.seconds:.1f}s; "
        f"{summary.rate:.0f} messages/s while busy"
    )
