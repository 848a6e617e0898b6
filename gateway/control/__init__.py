"""The fleet control channel's message formats (shared by the sidecar and the collector; no gRPC here)."""
