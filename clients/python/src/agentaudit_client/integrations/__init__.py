"""Framework adapters: govern an existing agent's tool calls with a line or two (docs/integrations.md).

Each adapter is its own module behind an optional extra, so importing this package imports no framework.
"""
