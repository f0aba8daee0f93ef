"""Signed webhooks and the admin list of their deliveries."""
