"""Maintenance scripts run with `python -m scripts.<name>` (see the Makefile)."""
