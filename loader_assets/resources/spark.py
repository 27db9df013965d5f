"""The Spark session that writes target tables: created lazily, once per process, with Delta configured.

A session costs about 20 s to start on this class of machine (DESIGN.md section 8), so nothing creates it until
a batch has files to read. ``getOrCreate`` would silently ignore static confs (jars, extensions) when a session
already exists, so the builder is applied only when no session is active, and an existing session without the
Delta extensions is rejected with a clear error instead of failing later.
"""


import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

DELTA_CONFS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# Defaults for every master; any key the user sets wins. Delta keeps only a 32-character prefix of a string
# column in its file statistics, and landing paths share longer prefixes than that, so `_source_file IN (...)`
# (the post-load check, a reload's replaceWhere) could skip no file; with 256 characters it skips every file
# whose paths cannot match.
DELTA_DEFAULTS = {
    "spark.databricks.io.skipping.stringPrefixLength": "256",
}
# Defaults for a local master; any key the user sets wins.
LOCAL_DEFAULTS = {
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.databricks.delta.snapshotPartitions": "4",
    "spark.sql.session.timeZone": "UTC",
}

_lock = threading.Lock()
_sessions_started = 0


def sessions_started() -> int:
    """How many times this process asked for a session through the loader (0 means Spark never started)."""
    return _sessions_started


def get_or_create_spark(master: str, app_name: str, conf: Mapping[str, str]) -> "SparkSession":
    """The process's Spark session with Delta, built from ``master``/``conf`` if none is active yet."""
    global _sessions_started
    with _lock:
        from delta import configure_spark_with_delta_pip
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is None:
            builder = SparkSession.builder.master(master).appName(app_name)
            settings = {**DELTA_DEFAULTS, **(LOCAL_DEFAULTS if master.startswith("local") else {}), **DELTA_CONFS,
                        **dict(conf)}
            for key, value in settings.items():
                builder = builder.config(key, value)
            logger.info("starting Spark session (master=%s)", master)
            session = configure_spark_with_delta_pip(builder).getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
        else:
            session = active
            extensions = session.conf.get("spark.sql.extensions", "") or ""
            if "DeltaSparkSessionExtension" not in extensions:
                raise RuntimeError(
                    "an active Spark session without the Delta extensions exists in this process; "
                    "create it with loader_assets.resources.spark.get_or_create_spark or add "
                    f"{DELTA_CONFS['spark.sql.extensions']} to it"
                )
        _sessions_started += 1
        return session


class SparkSessionResource(dg.ConfigurableResource):
    """Lazy Spark session with Delta Lake: nothing starts until ``.session`` is first used.

    Example::

        spark = SparkSessionResource(master="local[*]", conf={"spark.driver.memory": "4g"})
        df = spark.session.read.parquet(path)   # the JVM starts here, not before
    """

    master: str = "local[*]"
    app_name: str = "loader-assets"
    conf: dict[str, str] = {}

    _session: Any = PrivateAttr(default=None)

    @property
    def session(self) -> "SparkSession":
        if self._session is None:
            self._session = get_or_create_spark(self.master, self.app_name, self.conf)
        return self._session
