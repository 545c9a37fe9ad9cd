"""The HTTP API: packet ingestion, call completion, and the supervisor's status endpoints."""
