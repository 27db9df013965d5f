"""A class-data-sharing archive of Spark's classes, so a driver JVM starts in about half the time.

A process that starts Spark spends most of its first 20-40 s loading and verifying the same tens of thousands of
classes from Spark's jars. Java's class-data sharing (CDS, JDK 13+) maps them from an archive instead. The archive
is made once per machine (``build``: a child process starts Spark with ``-XX:ArchiveClassesAtExit``, runs a small
Delta workload, and the archive is written when its JVM exits) and used by every later driver JVM the loader
starts (``java_options``: ``-XX:SharedArchiveFile``). ``loader-assets prepare-spark`` builds it; ``./dev setup``
runs that.

Invariants:
- The archive is keyed by what the JVM checks it against: the java binary (path, size, modification time),
  Spark's home and the names, sizes and modification times of its jars (the JVM refuses an archive whose jar has
  another modification time, so a virtualenv re-created at the same path with the same wheels needs a new one).
  A changed JVM or Spark gets a new archive; an old one is never used for it.
- It is written to a temporary name and renamed into place only once its JVM has exited and the file is complete,
  under a file lock (processes that start at once build it once). A half-written archive is never at the final
  name.
- Using it can only make a start faster: the JVM checks the archive against its own class path and ignores it if
  they differ (``-Xshare:auto``, its messages off), falling back to loading classes from the jars as before.
- Classes from ``spark.jars`` (Delta) are loaded by Spark's own class loader, which a dynamic archive does not
  cover; they still load from their jars.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

# quiet: an archive that does not fit this JVM is ignored without a warning on every start
USE_OPTIONS = "-Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off"
DISABLE_ENV = "LOADER_ASSETS_NO_CDS"  # set to 1: start Spark without the archive (and never build one)

# the child that builds the archive: the loader's own session, a Delta write, read, MERGE and history, then the
# JVM is told to exit (its stdin closes) and waited for, since it writes the archive as it exits
_BUILD_SCRIPT = """
import json, sys
from pyspark import SparkContext
from loader_assets.resources.spark import get_or_create_spark
args = json.loads(sys.argv[1])
spark = get_or_create_spark(args["master"], "loader-assets-cds", args["conf"])
path = args["table"]
spark.range(100).selectExpr("id", "cast(id as string) as name").write.format("delta").save(path)
spark.read.format("delta").load(path).write.mode("overwrite").option("header", "true").csv(path + "_csv")
spark.read.option("header", "true").csv(path + "_csv").write.mode("overwrite").json(path + "_json")
spark.read.json(path + "_json").count()
spark.range(50).selectExpr("id", "'x' as name").createOrReplaceTempView("changes")
spark.sql(f"MERGE INTO delta.`{path}` t USING changes s ON t.id = s.id "
          "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *")
spark.sql(f"DESCRIBE HISTORY delta.`{path}`").collect()
spark.read.format("delta").load(path).groupBy("name").count().collect()
process = SparkContext._gateway.proc
spark.stop()
process.stdin.close()
process.wait(timeout=600)
"""


def _java() -> Path | None:
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else None
    if found is None or not found.is_file():
        which = shutil.which("java")
        found = Path(which) if which else None
    return found.resolve() if found else None


def archive_path() -> Path | None:
    """Where this machine's archive for this JVM and Spark lives (whether or not it exists yet); None when
    there is no java to key it on."""
    import pyspark

    from loader_assets.resources.spark import jar_cache_dir

    java = _java()
    if java is None:
        return None
    key = archive_key(java, Path(pyspark.__file__).parent, pyspark.__version__)
    return jar_cache_dir() / f"spark-classes-{key}.jsa"


def archive_key(java: Path, spark_home: Path, spark_version: str) -> str:
    """What an archive is valid for, as a short hash: see the module's first invariant."""
    stat = java.stat()
    parts = [str(java), str(stat.st_size), str(int(stat.st_mtime)), str(spark_home), spark_version]
    for jar in sorted((spark_home / "jars").glob("*.jar")):
        jar_stat = jar.stat()
        parts.append(f"{jar.name}:{jar_stat.st_size}:{int(jar_stat.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def java_options() -> str:
    """The driver JVM options that use this machine's archive, or "" when it has none (or it is disabled)."""
    if os.environ.get(DISABLE_ENV):
        return ""
    path = archive_path()
    if path is None or not path.is_file():
        return ""
    return f"-XX:SharedArchiveFile={path} {USE_OPTIONS}"


def build(master: str = "local[1]", conf: dict[str, str] | None = None) -> Path | None:
    """This machine's archive, built now if it is missing (about a minute, once). None if disabled or no java.

    Safe to call from processes that start at once: one builds under a file lock, the others wait and find it.
    A failed build raises with the child's output; nothing is left at the archive's name.
    """
    import fcntl

    if os.environ.get(DISABLE_ENV):
        return None
    path = archive_path()
    if path is None:
        return None
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "cds.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            if path.is_file():
                return path
            _build(path, master, dict(conf or {}))
            return path
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def _build(path: Path, master: str, conf: dict[str, str]) -> None:
    import json

    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    options = conf.pop("spark.driver.extraJavaOptions", "")
    conf["spark.driver.extraJavaOptions"] = f"-XX:ArchiveClassesAtExit={partial} -Xlog:cds=off " \
                                            f"-Xlog:cds+dynamic=off {options}".strip()
    conf.setdefault("spark.ui.enabled", "false")
    logger.info("building the Spark class archive %s (once per machine)", path)
    with tempfile.TemporaryDirectory() as scratch:
        args = json.dumps({"master": master, "conf": conf, "table": str(Path(scratch) / "table")})
        env = {**os.environ, DISABLE_ENV: "1"}  # the child's session must not use an archive while making one
        done = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, args], env=env, capture_output=True,
                              text=True, check=False, timeout=1800)
    if done.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"could not build the Spark class archive (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    partial.replace(path)
