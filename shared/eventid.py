"""Event ids derived from the event they answer, so a redelivery gets the same id (CloudEvents: source + id
identify an event; a consumer may drop duplicates by them)."""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("8a3c2f55-6f0e-4d0b-9d2a-6b9e1c4f7a10")


def derived_id(source: str, event_id: str, *scope: str) -> str:
    """A stable id for the event that answers (`source`, `event_id`); `scope` tells answers apart
    (the reply type, the variant)."""
    return str(uuid.uuid5(NAMESPACE, "\x1f".join((source, event_id, *scope))))
