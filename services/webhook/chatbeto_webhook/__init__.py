"""webhook service."""
