"""Policy: decision values, the engine interface and its implementations (pure: no I/O at evaluation)."""
