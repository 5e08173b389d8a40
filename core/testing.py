"""The tgmux pytest plugin (fixtures for testing through a fake Telegram). Filled in by the Telegram frontend work."""
