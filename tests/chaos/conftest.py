"""The chaos suite starts its own servers and processes: no shared stores to clean."""

import pytest


@pytest.fixture(autouse=True)
def clean_stores() -> None:
    return None
