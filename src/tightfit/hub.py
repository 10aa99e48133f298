"""Whether the Hugging Face hub may be asked: shared by the planner (configs of hub ids)
and train (weights of hub ids), so neither imports the other for it."""

from __future__ import annotations

import os
import socket


def network_allowed() -> tuple[bool, str]:
    """(allowed, reason): offline flags first, then a 2 s connection to huggingface.co."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            return False, f"{var} is set"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True, ""
    except OSError as exc:
        return False, f"cannot reach huggingface.co ({exc.__class__.__name__})"
