"""gRPC plumbing that the sidecar and the collector both use: handlers and the one error-to-status mapping,
the wire-level request checks, authentication, health, telemetry and listener addresses."""
