# The Shipyard server image: `shipyard server` on 8000 (REST) and 8001 (gRPC).
#
#   docker build -t shipyard:0.1.0 .                                  # sklearn + postgres
#   docker build -t shipyard:0.1.0-all --build-arg EXTRAS=all .       # every runtime
#
# It runs as uid/gid 10001 on a read-only root filesystem: everything it writes goes
# under /data (SHIPYARD_HOME: the embedded SQLite registry, artifacts, the load cache)
# and TMPDIR=/tmp (scratch registries, worker sockets). Mount a volume on /data and an
# emptyDir on /tmp. Beyond loopback the server refuses to start without API keys: create
# one first (`docker run --rm -v DATA:/data --entrypoint shipyard IMAGE keys create
# --role admin`), use a registry database that holds keys (SHIPYARD_DATABASE_URL), or
# append --insecure to run open on purpose.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Comma-separated pip extras of pyproject.toml: the model runtimes this image can load.
ARG EXTRAS=sklearn,postgres
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/shipyard/venv
COPY pyproject.toml README.md ./
COPY src ./src
# A regular (not editable) install: the runtime stage copies the venv alone.
RUN /opt/shipyard/venv/bin/pip install --no-cache-dir ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=sklearn,postgres
LABEL org.opencontainers.image.title="shipyard" \
      org.opencontainers.image.description="Deploy machine-learning models and keep them healthy in production." \
      org.opencontainers.image.licenses="Apache-2.0" \
      ai.shipyard.extras="${EXTRAS}"
RUN groupadd --system --gid 10001 shipyard \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /data \
       --no-create-home --shell /usr/sbin/nologin shipyard \
    && mkdir /data \
    && chown 10001:10001 /data
COPY --from=builder /opt/shipyard/venv /opt/shipyard/venv
ENV PATH=/opt/shipyard/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHIPYARD_HOME=/data \
    HOME=/data \
    TMPDIR=/tmp
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000 8001
# Python's standard library, since the slim base has no curl. A 503 (not ready yet, or
# draining) and a refused connection both fail the check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('SHIPYARD_HEALTHCHECK_URL', 'http://127.0.0.1:8000/v2/health/ready'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
ENTRYPOINT ["shipyard", "server", "--host", "0.0.0.0"]
