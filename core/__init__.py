"""The rules of Callstream that do not depend on a transport: ingestion and the domain errors.
The HTTP routes, the bare-ASGI fast path, the WebSocket and the worker's sweep are adapters."""
