"""pytest fixtures for testing loader tables: one Spark session for the whole test session, a lake per test.

Use them from your ``conftest.py``::

    pytest_plugins = ["loader_assets.testing.fixtures"]

- ``loader_spark`` (session): the local Spark session with Delta, started once (about 20 s), shared by every test.
- ``loader_instance``: a temporary Dagster instance (sqlite in a temp dir), disposed after the test.
- ``loader_lake``: a factory, ``loader_lake(tables=[...])`` or ``loader_lake(config="configs/prod.yaml")``, that
  makes a :class:`~loader_assets.testing.LoaderTestLake` in the test's ``tmp_path`` on that instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from loader_assets.testing import LoaderTestLake

SPARK_CONF = {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false",
              "spark.databricks.delta.snapshotPartitions": "1"}


@pytest.fixture(scope="session")
def loader_spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    from loader_assets.resources.spark import get_or_create_spark

    ours = SparkSession.getActiveSession() is None  # a session someone else started is theirs to stop
    session = get_or_create_spark("local[2]", "loader-assets-tests", SPARK_CONF)
    yield session
    if ours:
        session.stop()


@pytest.fixture
def loader_instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def loader_lake(loader_spark: Any, loader_instance: dg.DagsterInstance, tmp_path: Path  # noqa: ANN401
                ) -> Callable[..., LoaderTestLake]:
    def make(**kwargs: Any) -> LoaderTestLake:  # noqa: ANN401
        kwargs.setdefault("spark", {"master": "local[2]", "conf": SPARK_CONF})
        return LoaderTestLake(tmp_path / "lake", loader_instance, **kwargs)

    return make
