"""agentaudit as an MCP proxy: every ``tools/call`` decided, recorded and reported by the sidecar (docs/mcp.md)."""
