"""Framework adapters: govern an existing agent's tool calls with a line or two (see docs/integrations.md).

Each adapter is its own module, importing its framework only when imported itself, so ``import
agentaudit_client`` stays light; install a framework's extra (``agentaudit-client[langchain]``,
``[pydantic-ai]``, ...) to use its adapter. ``_common`` holds what they share.

``instrument()`` installs every adapter whose framework is importable. An adapter module takes part by defining
``install(settings: AdapterSettings) -> bool`` (True when it patched something, False when it was already in
place); ``ADAPTERS`` below names the module and the framework it needs.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Mapping
from typing import Any

from ._common import AdapterSettings

log = logging.getLogger("agentaudit_client.integrations")

ADAPTERS: Mapping[str, str] = {
    "langchain": "langchain.agents",
    "pydantic_ai": "pydantic_ai",
    "openai_agents": "agents",
    "adk": "google.adk",
    "claude_agent": "claude_agent_sdk",
}
"""Adapter module (in this package) → the framework module it needs, in the order they are installed."""

_installed: dict[str, AdapterSettings] = {}
_lock = threading.Lock()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module with no spec
        return False


def instrument(settings: AdapterSettings | None = None, **identity: Any) -> list[str]:
    """Installs every adapter whose framework is importable; idempotent.

    Reads the sidecar address and identity from ``AGENTAUDIT_*`` (``AdapterSettings.from_env``) unless
    ``settings`` is given; ``identity`` overrides single fields. Agents created after this call are governed;
    call it before building them.

    Returns:
        The adapters that are installed (now or by an earlier call), by module name.

    Raises:
        AdapterConfigError: no tenant (neither ``AGENTAUDIT_TENANT_ID`` nor ``tenant_id=``), or a bad setting.
    """
    chosen = settings if settings is not None else AdapterSettings.from_env(**identity)
    with _lock:
        for name, framework in ADAPTERS.items():
            if name in _installed or not _importable(framework):
                continue
            try:
                adapter = importlib.import_module(f"{__name__}.{name}")
            except ImportError as exc:  # the adapter, or a part of its framework it needs, is not there
                log.debug("agentaudit: adapter %s not available: %s", name, exc)
                continue
            install = getattr(adapter, "install", None)
            if install is None:
                continue
            install(chosen)
            _installed[name] = chosen
        return list(_installed)


def uninstrument() -> None:
    """Removes what ``instrument`` installed (for tests and for apps that govern only part of their life)."""
    with _lock:
        for name in list(_installed):
            adapter = importlib.import_module(f"{__name__}.{name}")
            uninstall = getattr(adapter, "uninstall", None)
            if uninstall is not None:
                uninstall()
            del _installed[name]


__all__ = ["ADAPTERS", "AdapterSettings", "instrument", "uninstrument"]
