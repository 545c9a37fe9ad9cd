"""The arq worker: flush calls to PostgreSQL, run the AI steps with retries, move the states."""
