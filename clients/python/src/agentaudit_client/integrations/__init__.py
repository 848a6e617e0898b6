"""Framework adapters: govern an existing agent's tool calls with a line or two (see docs/integrations.md).

Each adapter is its own module, importing its framework only when imported itself, so ``import
agentaudit_client`` stays light; install a framework's extra (``agentaudit-client[langchain]``,
``[pydantic-ai]``) to use its adapter. ``_common`` holds what they share.
"""
