"""Approvals in Slack (docs/slack.md): a Block Kit message when an approval opens anywhere in the fleet, with
Approve and Deny buttons answered through ``POST /slack/interactions``, and the message updated with the outcome.

Modules: :mod:`~gateway.slack.messages` (the messages, pure), :mod:`~gateway.slack.api` (slack_sdk's clients,
errors translated), :mod:`~gateway.slack.store` (its two tables), :mod:`~gateway.slack.poster` (posting and
updating, off the ingest path), :mod:`~gateway.slack.interactions` (the signed endpoint) and
:mod:`~gateway.slack.bridge` (the owner that wires them to ``FleetControl``). Needs the ``slack`` extra
(``slack_sdk``, ``aiohttp``, ``starlette``); only the collector imports this package, never the sidecar.
"""

from __future__ import annotations

from gateway.slack.bridge import SlackBridge, slack_routes

__all__ = ["SlackBridge", "slack_routes"]
