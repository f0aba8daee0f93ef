"""The gateway: authenticates, validates and publishes."""
