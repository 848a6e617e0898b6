"""Coding-agent hooks: ``agentaudit hook claude-code|codex|cursor|gemini`` (docs/integrations.md).

The agent runs the hook as a new process for every tool call, so start-up time is the hook's latency: this
package imports no server code and no framework, and not even gRPC or protobuf: it calls the sidecar through
its own small gRPC client over HTTP/2 (docs/adr/0026-hook-transport.md).

- :mod:`.dialects`: each agent's hook JSON in (one :class:`~.dialects.ToolEvent`) and its answer out.
- :mod:`.pairing`: the tiny state files that carry a pre-event id from PreToolUse to PostToolUse.
- :mod:`.runtime`: decide or report one event against the sidecar, failing closed.
- :mod:`.unary`: the unary gRPC calls over ``h2``, failures mapped to the status gRPC's client reports.
- :mod:`.wire`: the protobuf wire form of the hook's three requests and three answers.
- :mod:`.install`: writes the hook into an agent's settings file, keeping what is there.
"""
