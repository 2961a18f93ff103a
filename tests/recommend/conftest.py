from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "spark: starts a local[2] loopback Spark session (skipped without Java/pyspark)"
    )


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One loopback ``local[2]`` Spark session for every Spark test of the run (JVM start-up
    is most of a Spark test's time)."""
    from provguard.adapters.spark_session import local_spark_session

    session = local_spark_session("provguard-tests", shuffle_partitions=2)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
