#!/usr/bin/env bash
# Regenerates the committed gRPC modules from inference.proto (needs grpcio-tools,
# which the dev extra installs). Run from the repository root.
set -euo pipefail
.venv/bin/python -m grpc_tools.protoc -Isrc \
    --python_out=src --pyi_out=src --grpc_python_out=src \
    src/shipyard/transports/grpc_v2/inference.proto
