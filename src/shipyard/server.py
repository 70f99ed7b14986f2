"""The composition root: builds the services, then the ASGI app and the gRPC server."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    import grpc
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, disable_created_metrics

from shipyard import __version__
from shipyard.api.app import create_app
from shipyard.api.state import ControlPlane
from shipyard.config import Settings
from shipyard.errors import ModelNotReady
from shipyard.logs import configure_logging
from shipyard.monitoring.cost import CostMeter
from shipyard.monitoring.drift_monitor import DriftScheduler
from shipyard.monitoring.fronts import FrontMetrics
from shipyard.monitoring.metrics import DataPlaneCollector
from shipyard.monitoring.prediction_log import PredictionLog
from shipyard.monitoring.requests import RequestObserver
from shipyard.monitoring.tracing import RequestTracer
from shipyard.promotion.guardrails import PromotionGuard
from shipyard.registry.changes import ChangeCounter
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from shipyard.routing.deployments import DeploymentRouter
from shipyard.routing.fleet_gates import report_arms
from shipyard.routing.rollouts import RolloutController
from shipyard.runtimes.environments import EnvironmentBuilder
from shipyard.runtimes.lifetime import die_with_parent
from shipyard.scaling.autoscaler import Autoscaler
from shipyard.scaling.membership import Member, heartbeat, rate_share, watch_fleet
from shipyard.security.gate import Gatekeeper
from shipyard.security.keys import REFRESH_SECONDS
from shipyard.security.sessions import SessionSigner
from shipyard.security.tokens import TokenVerifier
from shipyard.serving.attached import ATTACH_TIMEOUT_SECONDS, Channel, FrontSide, PrimarySide
from shipyard.serving.cache import ResultCache
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.manager import ModelManager
from shipyard.serving.spares import Spares
from shipyard.serving.types import ModelKey
from shipyard.serving.worker_process import WORKER_SOCKETS_ENV
from shipyard.serving.workers import WorkerPool
from shipyard.transports.front_door import FrontDoor
from shipyard.transports.fronts import FrontProcesses
from shipyard.transports.grpc_v2.servicer import start_grpc_server
from shipyard.transports.http import ASGIApp, Receive, Scope, Send
from shipyard.transports.http_gate import HttpGate
from shipyard.transports.http_protocol import guarded_protocol
from shipyard.transports.limits import BodyLimit, BodyLimits
from shipyard.transports.proxy import FromFronts, PassingGate, PrimaryProxy
from shipyard.transports.rest import RestLimits, document_inference, inference_routes
from shipyard.ui.app import router as console_routes

log = logging.getLogger("shipyard.server")
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


@dataclass
class Services:
    """Every long-lived component of one server, built once and wired here only."""

    settings: Settings
    control: ControlPlane
    gatekeeper: Gatekeeper
    metrics: CollectorRegistry
    observer: RequestObserver
    manager: ModelManager
    router: DeploymentRouter
    predictions: PredictionLog
    dataplane: DataPlane
    controller: RolloutController
    limits: RestLimits
    default_model: ModelRef | None = None
    fronts: Fronts | None = None
    request_metrics: CollectorRegistry | None = None
    """The request observer's own metrics (a front sends them to the primary)."""
    address: str | None = None
    """Where this server is reached, for the fleet's membership (None: not listening)."""


@dataclass(frozen=True)
class FrontOptions:
    """What a front process is built from (it crosses into the spawned process)."""

    settings: Settings
    default_model: ModelRef | None = None
    """What its `/invocations` scores."""
    trust_settings: Settings | None = None
    """Open the registry whose keys guard the server (None: the one `settings` open)."""


@dataclass
class Fronts:
    """The primary's side of `--http-processes N`: the socket it bound, its private
    folder (workers' and its own Unix sockets), and the fronts' request metrics."""

    count: int
    listener: socket.socket
    run_dir: str
    options: FrontOptions
    metrics: FrontMetrics | None = None

    @property
    def primary_socket(self) -> str:
        return os.path.join(self.run_dir, "primary.sock")


def build_services(
    settings: Settings,
    registry: Registry | None = None,
    default_model: ModelRef | None = None,
    trust: Registry | None = None,
    *,
    fronts: Fronts | None = None,
    front: FrontSide | None = None,
) -> Services:
    """Build (not start) the components over one registry. `trust` is the registry whose
    keys and audit trail guard the server (default: `registry`). `fronts`: this is the
    primary of several HTTP processes; `front`: this is one of its fronts, whose pools
    send to the primary's workers."""
    registry = registry or Registry.open(settings)
    control = ControlPlane.over(registry, trust)
    control.unpack = settings.unpack_limits
    # Open or closed is decided here, once, from the keys and JWT settings at start.
    gatekeeper = Gatekeeper(
        control.keys,
        control.trust.audit,
        default_rate=settings.rate_limit,
        tokens=_token_verifier(settings),
        failure_rate=settings.auth_failure_rate,
        failure_burst=settings.auth_failure_burst,
        failure_window=settings.auth_failure_audit_seconds,
    )
    gatekeeper.sessions = SessionSigner(_session_secret(settings), settings.session_hours * 3600)
    # `_created` series would double every labelled series; Prometheus does not need them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = CollectorRegistry(auto_describe=False)
    request_metrics = metrics
    if fronts is not None or front is not None:
        # Kept apart: a front sends these to the primary, which adds them to its own.
        request_metrics = CollectorRegistry(auto_describe=False)
    if fronts is not None:
        fronts.metrics = FrontMetrics(request_metrics)
        metrics.register(fronts.metrics)
    observer = RequestObserver(
        request_metrics,
        tracer=RequestTracer.from_endpoint(settings.otlp_endpoint),
        access_log=settings.access_log,
        trace_sample=settings.otlp_sample,
        json_lines=settings.log_format == "json",
    )
    if front is None:
        manager = ModelManager(
            registry,
            serving_for=settings.serving_for,
            spares=Spares(settings.spare_workers),
            memory_budget=settings.memory_budget_bytes,
            max_workers=settings.max_workers,
            environments=EnvironmentBuilder.from_settings(settings),
        )
    else:  # the primary runs the workers, budgets their memory and scales them
        manager = ModelManager(registry, serving_for=settings.serving_for, attach=front.pool_for)
    control.serving = manager
    cache = ResultCache(settings.cache_entries, settings.cache_bytes, settings.cache_ttl)
    router = DeploymentRouter(manager, registry)
    direct_rate = settings.prediction_log_sample
    predictions = PredictionLog(
        registry.engine,
        lambda deployment: router.sample_rate(deployment, direct_rate),
        batch_rows=settings.prediction_log_batch,
        flush_seconds=settings.prediction_log_flush_seconds,
        retention_seconds=settings.prediction_log_retention_seconds,
    )
    dataplane = DataPlane(
        manager, timeout=settings.request_timeout, cache=cache, router=router,
        predictions=predictions, audit=control.trust.audit,
    )  # fmt: skip
    drift = control.monitoring.drift  # one monitor: scheduled, gate and API checks
    if settings.price_per_replica_hour is not None:
        control.cost = CostMeter(manager.snapshot, settings.price_per_replica_hour)
    metrics.register(
        DataPlaneCollector(
            manager.snapshot, cache.snapshot, router.snapshot, predictions, drift, control.cost
        )
    )
    controller = RolloutController(
        registry, router, tick_seconds=settings.rollout_tick, drift=drift
    )
    limits = RestLimits(
        default_model=default_model.name if default_model else None,
        max_body_bytes=settings.max_body_bytes,
        max_tensor_elements=settings.max_tensor_elements,
        body_timeout=settings.body_timeout,
    )
    return Services(
        settings, control, gatekeeper, metrics, observer, manager, router, predictions,
        dataplane, controller, limits, default_model, fronts, request_metrics,
    )  # fmt: skip


def _session_secret(settings: Settings) -> str:
    """The console's signing secret: the setting, else one made once and kept in the home
    (readable by its owner only), so sessions survive a restart."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value()
    path = settings.home / "session.secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    settings.home.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    draft = path.with_name(f".session.secret.{os.getpid()}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secret)
    try:
        os.link(draft, path)  # whole or not at all: another process never reads half
    except FileExistsError:  # another process of this home made it first
        secret = path.read_text().strip()
    finally:
        draft.unlink()
    return secret


def build_api(services: Services, lifespan: Lifespan | None = None) -> FastAPI:
    """The FastAPI application: control plane, read-only data-plane routes, /metrics."""
    api = create_app(services.control, lifespan=lifespan)
    api.include_router(inference_routes(services.dataplane, services.metrics))
    api.state.gatekeeper = services.gatekeeper  # the console signs people in with it
    api.include_router(console_routes)
    document_inference(api)
    return api


def build_app(
    settings: Settings,
    registry: Registry | None = None,
    default_model: ModelRef | None = None,
    grpc_address: tuple[str, int] | None = None,
    trust: Registry | None = None,
    fronts: Fronts | None = None,
    address: str | None = None,
) -> FrontDoor:
    """The full application: control plane and data plane over one registry.

    `default_model` is what `/invocations` scores; it is loaded before the
    server reports ready. With `grpc_address` the gRPC data plane runs beside
    REST on the same event loop.
    """
    services = build_services(settings, registry, default_model, trust, fronts=fronts)
    services.address = address

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with _running(services, grpc_address):
            yield

    bounded = BodyLimit(build_api(services, lifespan), _body_limits(settings))
    gate = HttpGate(bounded, services.gatekeeper)
    return FrontDoor(gate, services.dataplane, services.observer, services.limits)


@asynccontextmanager
async def _running(services: Services, grpc_address: tuple[str, int] | None) -> AsyncIterator[None]:
    """Start the background work, the default model and gRPC; stop them all on exit."""
    settings, control = services.settings, services.control
    services.predictions.start()
    try:
        await _load_default_model(services)
        grpc_server = await _start_grpc(services, grpc_address)
    except BaseException:
        # Stop what started (the prediction log's thread would keep the process alive
        # after uvicorn gave up: `shipyard serve` with a missing model used to hang).
        await _close(services)
        raise
    # Everything allocated so far (frameworks, registry, models' metadata) lives as
    # long as the server: move it out of the collector's sight, so full collections
    # during traffic stay short.
    gc.collect()
    gc.freeze()
    await _load_deployments(services)
    loop = asyncio.get_running_loop()
    fleet = control.registry.fleet
    replica = services.controller.holder  # its reports are the controller's own window
    # Evaluations a dead server left "running" never finish: say so before new ones start.
    # One runs at most three worker processes (candidate, champion, replay) in turn.
    longest = timedelta(seconds=3 * settings.isolation_limits.seconds + 60)
    await asyncio.to_thread(control.registry.evaluations.interrupted, longest)
    guard = PromotionGuard(control.registry, control.monitoring.store, settings.rollout_tick)
    tasks = [
        loop.create_task(report_arms(services.router, fleet, replica)),
        loop.create_task(_watch_keys(services.gatekeeper, services.control.trust.changes)),
        loop.create_task(services.controller.run()),
        loop.create_task(guard.run()),
        loop.create_task(DriftScheduler(control.monitoring.drift).run()),
        loop.create_task(Autoscaler(services.manager, settings.scaling_tick).run()),
    ]
    if services.fronts is not None:
        tasks.append(loop.create_task(_supervise_fronts(services, services.fronts)))
    processes = settings.http_process_count
    tasks.append(loop.create_task(watch_fleet(fleet, _rate_share(services.gatekeeper, processes))))
    if services.address is not None:
        me = Member(replica, services.address, __version__, datetime.now(UTC))
        load = functools.partial(_heartbeat_load, services.manager)
        tasks.append(loop.create_task(heartbeat(fleet, me, load)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        if services.fronts is not None:
            await asyncio.gather(*tasks, return_exceptions=True)  # fronts stop first
        if grpc_server is not None:
            await grpc_server.stop(grace=2)
        await _close(services)


async def _load_default_model(services: Services) -> None:
    default_model = services.default_model
    if default_model is None:
        return
    version = None
    if default_model.version is not None:
        version = str(default_model.version)
    elif default_model.alias is not None:
        version = default_model.alias
    await services.manager.load(default_model.name, version)


async def _start_grpc(
    services: Services, grpc_address: tuple[str, int] | None
) -> grpc.aio.Server | None:
    if grpc_address is None:
        return None
    settings = services.settings
    grpc_server, port = await start_grpc_server(
        services.dataplane,
        grpc_address[0],
        grpc_address[1],
        max_message_bytes=settings.max_body_bytes,
        max_elements=settings.max_tensor_elements,
        gate=services.gatekeeper,
        tls=_tls_pair(settings),
        observer=services.observer,
    )
    log.info("gRPC running on %s:%d", grpc_address[0], port)
    return grpc_server


async def _close(services: Services) -> None:
    """Write what is buffered (prediction log, access lines, key use), stop the workers,
    close the registries: the end of a server's or a front's life."""
    await asyncio.to_thread(services.predictions.close)
    services.observer.close()
    await asyncio.to_thread(services.gatekeeper.close)
    await services.manager.close()
    control = services.control
    control.registry.close()
    if control.trust is not control.registry:
        control.trust.close()


# --- several HTTP processes (--http-processes N) ------------------------------------


async def _supervise_fronts(services: Services, fronts: Fronts) -> None:
    """The primary's part: serve each front's requests for workers, keep its metrics,
    and keep N-1 fronts running."""
    manager = services.manager

    async def ready_pool(model: str, version: int) -> WorkerPool:
        record = await manager.resolve(model, str(version))
        # The front checked the caller may load it (get_ready's demand check) already.
        loaded = await manager.get_ready(record, ATTACH_TIMEOUT_SECONDS, deployed=True)
        if loaded.pool is None:
            raise ModelNotReady(f"{loaded.key} was just unloaded; retry shortly")
        return loaded.pool

    def find_pool(key: ModelKey) -> WorkerPool | None:
        loaded = manager.models.get(key)
        return loaded.pool if loaded is not None else None

    hub = PrimarySide(ready_pool, find_pool, sharing=fronts.count)
    metrics = fronts.metrics

    def started(index: int, channel: Channel) -> None:
        if metrics is not None:
            channel.on("metrics", lambda families: metrics.update(index, families))
        hub.add(channel)

    def exited(index: int) -> None:
        if metrics is not None:
            metrics.retire(index)

    processes = FrontProcesses(
        fronts.count - 1,
        fronts.listener,
        front_main,
        (fronts.options, fronts.primary_socket),
        started,
        exited,
    )
    try:
        await processes.run()
    finally:
        hub.close()


def front_main(
    index: int,
    listener: socket.socket,
    connection: Connection,
    options: FrontOptions,
    primary_socket: str,
) -> None:
    """Entry point of a front process: serve HTTP on the primary's socket until stopped."""
    settings = options.settings
    die_with_parent()
    # Ctrl-C reaches the primary's process group; the primary stops its fronts itself
    # (SIGTERM: they finish what they hold), and must not see them quit and restart them.
    os.setpgid(0, 0)
    configure_logging(json_lines=settings.log_format == "json")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per proxied request
    app = build_front(options, Channel(connection), primary_socket)
    host, port = listener.getsockname()[:2]
    config = _uvicorn_config(app, settings, host=host, port=port)
    uvicorn.Server(config).run(sockets=[listener])


def build_front(options: FrontOptions, channel: Channel, primary_socket: str) -> ASGIApp:
    """A front process's application: inference on its own fast path over the primary's
    workers, everything else passed to the primary."""
    settings = options.settings
    front = FrontSide(channel, settings.scaling_tick, sharing=settings.http_process_count)
    trust = Registry.open(options.trust_settings) if options.trust_settings else None
    services = build_services(settings, None, options.default_model, trust, front=front)
    proxy = PrimaryProxy(primary_socket, tls=settings.tls_cert is not None)
    door = FrontDoor(
        PassingGate(proxy, services.gatekeeper),
        services.dataplane,
        services.observer,
        services.limits,
    )

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with _front_running(services, front, channel, proxy):
            yield

    return WithLifespan(door, lifespan)


@asynccontextmanager
async def _front_running(
    services: Services, front: FrontSide, channel: Channel, proxy: PrimaryProxy
) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    manager = services.manager
    forgetting: set[asyncio.Task[None]] = set()

    def gone(key: ModelKey) -> None:
        task = loop.create_task(manager.forget(key, "the server closed its workers"))
        forgetting.add(task)
        task.add_done_callback(forgetting.discard)

    front.on_gone = gone
    channel.start()
    services.predictions.start()
    gc.collect()
    gc.freeze()
    replica = f"{socket.gethostname()}:{os.getpid()}:front"
    fleet = services.control.registry.fleet
    processes = services.settings.http_process_count
    tasks = [
        loop.create_task(watch_fleet(fleet, _rate_share(services.gatekeeper, processes))),
        loop.create_task(report_arms(services.router, services.control.registry.fleet, replica)),
        loop.create_task(front.run()),
        loop.create_task(_watch_keys(services.gatekeeper, services.control.trust.changes)),
        loop.create_task(_send_metrics(channel, services.request_metrics)),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await _close(services)
        await proxy.close()
        channel.close()


async def _send_metrics(channel: Channel, registry: CollectorRegistry | None) -> None:
    """A front's request metrics, to the primary's /metrics, every second."""
    if registry is None:
        return
    while True:
        await asyncio.sleep(1.0)  # a reporting cadence, not a sync point
        channel.send("metrics", list(registry.collect()))


class WithLifespan:
    """An ASGI app whose lifespan runs `running` (the front door passes it on otherwise)."""

    def __init__(
        self, app: ASGIApp, running: Callable[[], AbstractAsyncContextManager[None]]
    ) -> None:
        self.app = app
        self.running = running

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await receive()  # lifespan.startup
        context = self.running()
        try:
            await context.__aenter__()
        except Exception as exc:
            log.exception("front process failed to start")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await context.__aexit__(None, None, None)
        await send({"type": "lifespan.shutdown.complete"})


_KEYS_FULL_REFRESH_SECONDS = 30.0
"""How often the key table is re-read even if nothing changed (expiries pass with time)."""


async def _load_deployments(services: Services) -> None:
    """Load every live deployment's versions before the server takes traffic: a replica
    that says it is ready serves what it is asked to serve without a cold start, and an
    on-demand load later never makes it unready (DataPlane.server_ready)."""
    revisions = await asyncio.to_thread(services.control.registry.deployments.list)
    for revision in revisions:
        try:
            await services.router.route(revision.deployment)
        except Exception:
            log.exception("loading deployment %s at start failed", revision.deployment)


def _rate_share(gate: Gatekeeper, processes: int) -> Callable[[int], None]:
    """Keep the gate's share of each key's rate current with the fleet's size."""

    def set_share(live_replicas: int) -> None:
        gate.share = rate_share(live_replicas, processes)

    return set_share


def _heartbeat_load(manager: ModelManager) -> dict[str, Any]:
    """What a heartbeat says of this replica's load."""
    snapshots = manager.snapshot()
    pools = [s.pool for s in snapshots if s.pool is not None]
    return {
        "versions": sum(1 for s in snapshots if s.state == "ready"),
        "workers": sum(p.workers for p in pools),
        "queued": sum(p.queued for p in pools),
    }


async def _watch_keys(gate: Gatekeeper, changes: ChangeCounter) -> None:
    """Re-read the key table when the trust registry changed (keys are created and revoked
    with an audit event, which moves its change counter), record keys' last use and write
    the counts of refused logins, never on the request path."""
    flushed = refreshed = time.monotonic()
    seen: int | None = None
    while True:
        await asyncio.sleep(REFRESH_SECONDS)  # a refresh cadence, not a sync point
        try:
            sequence = await asyncio.to_thread(changes.current)
            if sequence != seen or time.monotonic() - refreshed >= _KEYS_FULL_REFRESH_SECONDS:
                await asyncio.to_thread(gate.keys.refresh)
                seen, refreshed = sequence, time.monotonic()
            await asyncio.to_thread(gate.flush)
            if time.monotonic() - flushed >= 5:
                flushed = time.monotonic()
                await asyncio.to_thread(gate.keys.flush_last_used)
        except Exception:
            log.exception("refreshing API keys failed")


def _body_limits(settings: Settings) -> BodyLimits:
    return BodyLimits(
        max_bytes=settings.max_control_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        timeout=settings.body_timeout,
    )


def _token_verifier(settings: Settings) -> TokenVerifier | None:
    if settings.jwt_secret is None and settings.jwt_jwks_file is None:
        return None
    return TokenVerifier(
        secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
        jwks_file=settings.jwt_jwks_file,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        roles_claim=settings.jwt_roles_claim,
    )


def _tls_pair(settings: Settings) -> tuple[bytes, bytes] | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()


LOOPBACK = ("127.0.0.1", "::1", "localhost")
"""The addresses trusted to run open; other loopback ones (127.0.0.2) stand for networks
in the tests and refuse like them (docs/security.md)."""


def check_exposure(door: FrontDoor, host: str, insecure: bool) -> None:
    """Refuse to listen beyond this machine without authentication, unless told to.

    The gate decided open or closed when it was built; a closed server stays closed
    until it stops, even if every key is revoked or expires (security/gate.py).
    """
    if not door.gate.open:
        log.info("authentication on: API keys required, until the server stops")
        return
    if host in LOOPBACK:
        log.warning(
            "running open: no API keys exist, so anyone on this machine may call every "
            "endpoint until one does (create one with `shipyard keys create --role admin`)"
        )
        return
    if not insecure:
        raise SystemExit(
            f"refusing to listen on {host} without authentication: create a key with "
            "`shipyard keys create --role admin`, or pass --insecure to run open"
        )
    log.warning("running open on %s (--insecure): anyone who can reach it may do anything", host)


def _uvicorn_config(app: ASGIApp, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=None,  # uvicorn's loggers go through ours (JSON lines by default)
        access_log=False,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        # Slow clients: a deadline on headers (our protocol; uvicorn has none), one
        # between body chunks (read_body, BodyLimit), and a bound on connections
        # beyond which uvicorn answers 503 once a request's headers are in.
        http=guarded_protocol(settings.header_timeout),
        limit_concurrency=settings.max_connections,
        # Forwarded headers only from a load balancer named as such (uvicorn would trust
        # 127.0.0.1 by default, so any local process could claim any address).
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )


def run(
    app: FrontDoor, settings: Settings, *, listener: socket.socket, insecure: bool = False
) -> None:
    """Serve `app` on the socket `serve_app` bound."""
    configure_logging(json_lines=settings.log_format == "json")
    host, port = listener.getsockname()[:2]
    check_exposure(app, host, insecure)
    config = _uvicorn_config(app, settings, host=host, port=port)
    _AnnouncingServer(config).run(sockets=[listener])


def serve(
    settings: Settings, *, host: str, port: int, grpc_port: int | None, insecure: bool = False
) -> None:
    """`shipyard server`: the control plane and every registered model (loaded on demand)."""
    log.info("registry %s", settings.redacted_database_url)
    serve_app(settings, host=host, port=port, grpc_port=grpc_port, insecure=insecure)


def serve_app(
    settings: Settings,
    *,
    host: str,
    port: int,
    grpc_port: int | None,
    insecure: bool = False,
    registry: Registry | None = None,
    default_model: ModelRef | None = None,
    trust_settings: Settings | None = None,
) -> None:
    """Serve over one HTTP process, or `settings.http_processes` of them on one port.

    `trust_settings` open the registry whose keys guard the server (default: the one
    `settings` open); each front process opens its own connections from them."""
    grpc_address = (host, grpc_port) if grpc_port is not None else None
    trust = Registry.open(trust_settings) if trust_settings is not None else None
    count = settings.http_process_count
    listener = _bind(host, port)
    if grpc_port:
        _check_free(host, grpc_port, "gRPC", "--grpc-port N, or -1 to turn gRPC off")
    address = _advertised(settings, listener)
    if count <= 1:
        app = build_app(settings, registry, default_model, grpc_address, trust, address=address)
        run(app, settings, listener=listener, insecure=insecure)
        return
    configure_logging(json_lines=settings.log_format == "json")
    run_dir = tempfile.mkdtemp(prefix="shipyard-")  # 0700: this user's processes only
    # Set before any worker or spare starts: each listens there for the fronts.
    os.environ[WORKER_SOCKETS_ENV] = run_dir
    options = FrontOptions(settings, default_model, trust_settings)
    fronts = Fronts(count, listener, run_dir, options)
    inner = build_app(
        settings, registry, default_model, grpc_address, trust, fronts=fronts, address=address
    )
    check_exposure(inner, host, insecure)
    private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    private.bind(fronts.primary_socket)
    private.listen(128)
    bound = listener.getsockname()
    config = _uvicorn_config(FromFronts(inner), settings, host=bound[0], port=bound[1])
    log.info("%d HTTP processes share %s:%d", count, bound[0], bound[1])
    try:
        _AnnouncingServer(config).run(sockets=[listener, private])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _advertised(settings: Settings, listener: socket.socket) -> str:
    """Where other replicas and operators reach this one: SHIPYARD_ADVERTISE_URL, else the
    address bound (this host's name when bound to every interface)."""
    if settings.advertise_url:
        return settings.advertise_url
    host, port = listener.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    scheme = "https" if settings.tls_cert is not None else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _AnnouncingServer(uvicorn.Server):
    """uvicorn says where it listens only for sockets it bound itself; the primary binds
    its own (to hand them down), so it says it here, in uvicorn's words."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets and not self.should_exit:
            self._log_started_message(sockets[:1])


def _check_free(host: str, port: int, what: str, hint: str) -> None:
    """Fail before starting when a port a later component binds is taken, with words a
    person can act on (the gRPC server binds it only once the app has started)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1" if host == "localhost" else host, port))
    except OSError as exc:
        raise SystemExit(
            f"cannot listen on {host}:{port} for {what}: {exc.strerror} "
            f"(another server is using it?); choose {hint}"
        ) from None
    finally:
        probe.close()


def _bind(host: str, port: int) -> socket.socket:
    """The one listening socket, bound here so that the server knows its port before it
    starts (port 0 picks one) and every front accepts on it (never SO_REUSEPORT: no other
    process may bind the port beside us)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host = "127.0.0.1"
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener
