"""Coding-agent hooks: ``agentaudit hook claude-code|codex|cursor|gemini`` (docs/integrations.md).

The agent runs the hook as a new process for every tool call, so start-up time is the hook's latency: this
package imports no server code and no framework, and loads gRPC only once it has a call to decide.

- :mod:`.dialects`: each agent's hook JSON in (one :class:`~.dialects.ToolEvent`) and its answer out.
- :mod:`.pairing`: the tiny state files that carry a pre-event id from PreToolUse to PostToolUse.
- :mod:`.runtime`: decide or report one event against the sidecar, failing closed.
- :mod:`.install`: writes the hook into an agent's settings file, keeping what is there.
"""
