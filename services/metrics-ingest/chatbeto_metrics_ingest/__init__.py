"""metrics-ingest: stores sessions and events in batches."""
