"""Storage: PostgreSQL models and queries, migrations, and the per-call Redis keys and scripts."""
