"""Telling a policy's webhook what happened to a promotion; never raising."""

from __future__ import annotations

import logging

from shipyard.registry import records

log = logging.getLogger("shipyard.promotion")


def notify(url: str | None, event: str, promotion: records.Promotion) -> None:
    """POST `{"event": ..., "promotion": {...}}`; a failed call is logged, not raised:
    the promotion already happened (or did not) whatever the receiver says."""
    if not url:
        return
    import httpx

    body = {"event": event, "promotion": promotion.model_dump(mode="json")}
    try:
        httpx.post(url, json=body, timeout=5.0)
    except httpx.HTTPError as exc:
        log.warning("promotion webhook %s failed: %s", url, exc)
