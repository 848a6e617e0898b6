"""agentaudit: a policy-and-audit gRPC sidecar for AI agents (decide, record signed, then answer)."""

__version__ = "0.1.0"
