from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "spark: starts a local[2] loopback Spark session (skipped without Java/pyspark)"
    )
