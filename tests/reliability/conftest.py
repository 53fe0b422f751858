from __future__ import annotations

import pytest

from tests.reliability import report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    outcome = "passed" if exitstatus == 0 else f"failed (pytest exit status {exitstatus})"
    path = report.write(outcome=outcome)
    if path is not None:
        print(f"\nreliability report: {path}")
