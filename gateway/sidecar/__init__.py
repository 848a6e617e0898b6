"""The sidecar's use cases and long-running services: deciding, recording, approvals, kill switches,
policy reloads, forwarding and retention. Imports journal/, policy/, rpc/ and primitives; never api/ or collector/."""
