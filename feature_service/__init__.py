"""Feature definitions, the online feature store and ingestion of real-time events."""
