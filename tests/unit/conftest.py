"""Pure logic: no servers, no cleaning."""

import pytest


@pytest.fixture(autouse=True)
def clean_stores() -> None:
    return None
