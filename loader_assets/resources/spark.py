"""The Spark session that writes target tables: created lazily, once per process, with Delta configured.

A session costs about 20 s to start on this class of machine (docs/ARCHITECTURE.md, "Measured costs"), so nothing
creates it until a batch has files to read. ``getOrCreate`` would silently ignore static confs (jars, extensions)
when a session already exists, so the builder is applied only when no session is active, and an existing session
without the Delta extensions is rejected with a clear error instead of failing later. The Delta jars are resolved
once per machine into a list of local files (``resolve_jars``), so a session start runs no Ivy and prints nothing.
"""


import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

from loader_assets.resources import jvm_archive

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from loader_assets.settings import LoaderSettings

logger = logging.getLogger(__name__)

DELTA_CONFS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# Defaults for every master; any key the user sets wins. Delta keeps only a 32-character prefix of a string
# column in its file statistics, and landing paths share longer prefixes than that, so `_source_file IN (...)`
# (the post-load check, a reload's replaceWhere) could skip no file; with 256 characters it skips every file
# whose paths cannot match.
# The session time zone is UTC on every master, not the JVM's: timestamps without an offset in csv/json files
# and the SQL of expectations must mean the same on a laptop, a cluster and a Spark Connect server. No
# progress bars on any master: the terminal shows the loader's own lines.
# Spark keeps the classes it generates for a query's operators in a cache shared by every query of the JVM,
# 100 classes by default (a static conf). One keyed load run generates about 150 (the validation, the change
# record's append, Delta's MERGE, the checks), so its own repeated shapes were evicted before they came back and
# every run compiled them again, and HotSpot compiled them again after that (docs/ARCHITECTURE.md, "Generated
# code kept between queries"). With room for 1,000, a run reuses what it and earlier runs of the same JVM
# compiled (a Spark Connect server, or `materialize` in one process).
CODEGEN_CACHE_ENTRIES = "1000"
DELTA_DEFAULTS = {
    "spark.databricks.io.skipping.stringPrefixLength": "256",
    "spark.sql.codegen.cache.maxEntries": CODEGEN_CACHE_ENTRIES,
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
}
# Defaults for a local master; any key the user sets wins.
LOCAL_DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.databricks.delta.snapshotPartitions": "4",
}

LOG4J2_PROPERTIES = Path(__file__).with_name("log4j2.properties")

_lock = threading.Lock()
_sessions_started = 0


@contextmanager
def session_conf(spark: "SparkSession", key: str, value: str) -> Iterator[None]:
    """``key`` set to ``value`` in the session's conf for the block, then put back as it was (unset if it was)."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def sessions_started() -> int:
    """How many times this process asked for a session through the loader (0 means Spark never started)."""
    return _sessions_started


def delta_packages() -> str:
    """The Maven coordinates of the delta-spark jars matching the installed delta-spark and pyspark (what
    delta's ``configure_spark_with_delta_pip`` adds as ``spark.jars.packages``)."""
    from importlib.metadata import version

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta_spark')}"


# Maven Central only: Spark's default Ivy chain also asks a local Maven cache and repos.spark-packages.org, and
# prints a "Host ... not found" line for every artifact when a machine cannot reach one of them.
_IVY_SETTINGS = """<ivysettings>
  <settings defaultResolver="loader-assets"/>
  <caches defaultCacheDir="{cache}"/>
  <resolvers>
    <chain name="loader-assets" returnFirst="true">
      <ibiblio name="central" m2compatible="true" root="https://repo1.maven.org/maven2/"/>
    </chain>
  </resolvers>
</ivysettings>
"""
_PRINT_JARS = (
    "from pyspark.java_gateway import launch_gateway\n"
    "print('JARS=' + (launch_gateway().jvm.java.lang.System.getProperty('spark.jars') or ''))\n"
)


def jar_cache_dir() -> Path:
    """Where resolved jars and their lists live: ``LOADER_ASSETS_JAR_CACHE``, else ~/.cache/loader-assets."""
    return Path(os.environ.get("LOADER_ASSETS_JAR_CACHE") or Path.home() / ".cache" / "loader-assets")


def resolve_jars(packages: str) -> list[str]:
    """Local paths of the jars of ``packages`` (Maven coordinates, comma-separated) and their dependencies.

    Resolved once per machine and package list, by ``spark-submit --packages`` of a two-line script in a child
    process whose Ivy report is captured (shown only if resolution fails), from Maven Central alone. Later
    sessions start with ``spark.jars`` set to the listed files: no Ivy run, nothing printed, a few seconds less.
    A list whose files are gone (a cleaned cache) is resolved again. Processes that start at once on a fresh
    machine (test workers, several CLIs) resolve one at a time under a file lock, and the later ones read the
    list the first one wrote: two Ivy runs on one cache can corrupt it.
    """
    import fcntl

    cache = jar_cache_dir()
    listing = cache / f"jars-{hashlib.sha256(packages.encode()).hexdigest()[:16]}.txt"
    jars = _listed_jars(listing)
    if jars:
        return jars
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "resolve.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            return _listed_jars(listing) or _resolve(packages, cache, listing)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def _listed_jars(listing: Path) -> list[str]:
    if listing.exists():
        jars = listing.read_text().split()
        if jars and all(Path(jar).is_file() for jar in jars):
            return jars
    return []


def _resolve(packages: str, cache: Path, listing: Path) -> list[str]:
    import pyspark

    settings = cache / "ivysettings.xml"
    settings.write_text(_IVY_SETTINGS.format(cache=cache / "ivy" / "cache"))
    spark_home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(spark_home), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "print_jars.py"
        script.write_text(_PRINT_JARS)
        logger.info("resolving %s from Maven Central (once per machine)", packages)
        done = subprocess.run(
            [str(spark_home / "bin" / "spark-submit"), "--packages", packages,
             "--conf", f"spark.jars.ivySettings={settings}", "--conf", f"spark.jars.ivy={cache / 'ivy'}",
             str(script)],
            env=env, capture_output=True, text=True, check=False,
        )
    printed = [line[5:] for line in done.stdout.splitlines() if line.startswith("JARS=")]
    jars = [jar.removeprefix("file://") for jar in printed[0].split(",")] if printed and printed[0] else []
    if done.returncode != 0 or not jars:
        raise RuntimeError(f"could not resolve the Spark packages {packages} from Maven Central "
                           f"(spark-submit exited {done.returncode}):\n{done.stderr[-3000:]}")
    partial = listing.with_suffix(".partial")
    partial.write_text("\n".join(jars) + "\n")
    partial.replace(listing)  # atomic: a concurrent resolver writes the same list
    return jars


def spark_config(master: str, app_name: str, conf: Mapping[str, str]) -> dict[str, str]:
    """Every conf the loader's session is built with: master, app name, the Delta jars and extensions, the
    defaults, and the user's ``conf`` (which wins over the defaults; user packages are resolved with Delta's and
    user jars added to them)."""
    user = dict(conf)
    packages = ",".join(p for p in (delta_packages(), user.pop("spark.jars.packages", "")) if p)
    jars = ",".join([*resolve_jars(packages), *filter(None, [user.pop("spark.jars", "")])])
    java_options = user.pop("spark.driver.extraJavaOptions", "")
    if "log4j2.configurationFile" not in java_options:  # errors only: see log4j2.properties
        java_options = f"-Dlog4j2.configurationFile=file:{LOG4J2_PROPERTIES} {java_options}".strip()
    if "SharedArchiveFile" not in java_options and "ArchiveClassesAtExit" not in java_options:
        java_options = f"{java_options} {jvm_archive.java_options()}".strip()  # Spark's classes, if archived
    defaults = {**DELTA_DEFAULTS, **(LOCAL_DEFAULTS if master.startswith("local") else {})}
    return {"spark.master": master, "spark.app.name": app_name, **defaults, **DELTA_CONFS,
            "spark.jars": jars, "spark.driver.extraJavaOptions": java_options, **user}


def get_or_create_spark(master: str, app_name: str, conf: Mapping[str, str],
                        remote: str | None = None) -> "SparkSession":
    """The process's Spark session with Delta, built from ``master``/``conf`` if none is active yet, or, with
    ``remote`` (``sc://host:port``), a Spark Connect session attached to that server.

    A local or cluster session is built by dagster-pyspark's ``LazyPySparkResource`` from ``spark_config``.
    Because ``getOrCreate`` hands back an existing session and ignores static confs (jars, extensions), an active
    session is reused only if it has the Delta extensions, and rejected with a clear error otherwise. Over
    Connect, ``master`` and ``conf`` configure the server (``loader-assets spark-connect-server``), not the
    client, and the server is checked for the Delta extensions the same way.
    """
    global _sessions_started
    with _lock:
        from pyspark.sql import SparkSession

        if remote:
            session = _attach(remote)
        else:
            active = SparkSession.getActiveSession()
            if active is None:
                from dagster_pyspark import LazyPySparkResource

                logger.info("starting Spark session (master=%s)", master)
                session = LazyPySparkResource(spark_config=spark_config(master, app_name, conf)).spark_session
                session.sparkContext.setLogLevel("ERROR")
            else:
                session = active
        extensions = session.conf.get("spark.sql.extensions", "") or ""
        if "DeltaSparkSessionExtension" not in extensions:
            where = (f"the Spark Connect server at {remote} has no Delta extensions; start it with "
                     "`loader-assets spark-connect-server`" if remote else
                     "an active Spark session without the Delta extensions exists in this process; create it "
                     "with loader_assets.resources.spark.get_or_create_spark")
            raise RuntimeError(f"{where} (or add {DELTA_CONFS['spark.sql.extensions']} to it)")
        _sessions_started += 1
        return session


def _attach(remote: str) -> "SparkSession":
    """A Spark Connect session on ``remote``: about a second, no JVM in this process. The first request is made
    here, so a server that cannot be reached fails now, naming the URL, instead of in the middle of a batch."""
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    logger.info("attaching to Spark Connect server %s", remote)
    try:
        session = SparkSession.builder.remote(remote).getOrCreate()
        logger.info("attached to Spark %s at %s", session.version, remote)
    except PySparkException as error:
        from loader_assets.core.errors import first_line

        raise RuntimeError(f"cannot reach the Spark Connect server at {remote}: {first_line(str(error))}") from error
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
    remote: str | None = None

    _session: Any = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: "LoaderSettings") -> "SparkSessionResource":
        return cls(master=settings.spark.master, app_name=settings.spark.app_name, conf=dict(settings.spark.conf),
                   remote=settings.spark.remote)

    @property
    def session(self) -> "SparkSession":
        if self._session is None:
            self._session = get_or_create_spark(self.master, self.app_name, self.conf, self.remote)
        return self._session
