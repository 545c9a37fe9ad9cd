"""What a test needs from the machine (the distribution's Chromium, espeak-ng, sox), in one
place: missing on a developer's machine, the test is skipped saying exactly what is missing and
how to get it; missing in CI (`CI` set, as `.ci/run`'s environment has it), the test FAILS, so
that a failed install can never turn the browser and speech tests into quiet skips."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

from simulate import speech


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """Skip (or, in CI, fail) the test: `what` says what is missing and how to install it."""
    if in_ci():
        pytest.fail(f"CI must have it: {what}", pytrace=False)
    pytest.skip(what)


def needs_program(program: str, why: str) -> pytest.MarkDecorator:
    """A test that needs `program`: skipped where it is missing, saying `why`, but never in CI,
    where it runs and fails without it."""
    return pytest.mark.skipif(shutil.which(program) is None and not in_ci(), reason=why)


def speech_or_skip() -> None:
    """espeak-ng and sox, for real speech."""
    if lacking := speech.missing_programs():
        missing(f"real speech needs {', '.join(lacking)} ({speech.INSTALL_HINT}; "
                "make test installs them)")  # fmt: skip
