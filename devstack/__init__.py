"""Embedded PostgreSQL and Redis for `make run` and the test suite: nothing but Python needed."""
