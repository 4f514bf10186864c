"""Telling a Hugging Face hub id (``owner/name``) from a local path: the one rule every loader uses."""

from __future__ import annotations

import re

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(name: str) -> bool:
    """True when ``name`` has the shape of a hub id (``owner/name``); the caller checks local paths first."""
    return bool(_HUB_ID.fullmatch(name))
