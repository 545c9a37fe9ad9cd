"""`make bench`: ingestion, WebSocket, drain and Redis-memory benchmarks; see BENCHMARKS.md."""
