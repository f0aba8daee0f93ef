"""Metrics (contract 3.2): GPTs, sessions, events, stats, the live feed and the dashboard."""
