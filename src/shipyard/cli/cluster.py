"""`shipyard cluster`: the replicas that share this registry, from their heartbeats."""

from __future__ import annotations

from datetime import UTC, datetime

from shipyard.cli.models import JsonOption, connect


def cluster(as_json: bool = JsonOption) -> None:
    """List the replicas (live or gone) of the fleet on this registry: address, version,
    load and last heartbeat. Against SHIPYARD_URL, or the local registry directly."""
    from shipyard.cli.output import print_json, print_table

    with connect() as client:
        document = client.cluster()
    if as_json:
        print_json(document)
        return
    now = datetime.now(UTC)
    rows = []
    for replica in document["replicas"]:
        seen = datetime.fromisoformat(str(replica["heartbeat_at"]))
        load = replica["load"]
        rows.append((
            replica["id"], replica["address"], replica["version"],
            "live" if replica["live"] else "gone", f"{(now - seen).total_seconds():.0f} s ago",
            load.get("versions", ""), load.get("workers", ""), load.get("queued", ""),
        ))  # fmt: skip
    title = f"{sum(1 for r in document['replicas'] if r['live'])} live replicas"
    columns = ("id", "address", "version", "state", "heartbeat", "versions", "workers", "queued")
    print_table(title, columns, rows)
