"""``loader-assets`` command line, in the seed guide's style: ``run``, ``status``, ``validate-consistency
[--fix]``, ``fix-inconsistencies``, ``force-unlock``, ``reset-state``; and per file ``retry``, ``reprocess``,
``skip`` (each recorded in the table's event log) and ``history``.

Exit codes: 0 success, 1 when any file failed (or a run failed), when the pipeline is inconsistent, when a fix
needs an operator, or when a confirmation was declined; 2 on usage or configuration errors.
Runs go through Dagster and are recorded in ``$DAGSTER_HOME`` (default ``./.dagster_home``, created with the
project's ``dagster.yaml``), so they show in the UI of ``dagster dev`` started with the same home.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loader_assets.core.errors import ConfigError, LoaderError
from loader_assets.settings import LoaderSettings, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    import dagster as dg
    from pyspark.sql import SparkSession

    from loader_assets.api import RunSummary
    from loader_assets.operations import FixReport, PipelineConsistency

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loader-assets", description="Load landing files into Delta tables exactly once.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="load every new file of the configured tables through Dagster")
    run.add_argument("--config", required=True, help="YAML or JSON config file")
    run.add_argument("--table", action="append", dest="tables", metavar="NAME", help="only this table (repeatable)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--skip-checks", action="store_true",
                     help="do not run the asset checks after each load (run validate-consistency when wanted)")

    status = sub.add_parser("status", help="lock holders and file counts by status, per table")
    status.add_argument("--config", required=True, help="YAML or JSON config file")
    status.add_argument("--json", action="store_true", help="print as JSON")

    validate = sub.add_parser("validate-consistency", help="check tracker, locks and tables; exit 1 if inconsistent")
    validate.add_argument("--config", required=True, help="YAML or JSON config file")
    validate.add_argument("--table", action="append", dest="tables", metavar="NAME", help="only this table")
    validate.add_argument("--fix", action="store_true", help="apply fix-inconsistencies, then validate again")
    validate.add_argument("--json", action="store_true", help="print as JSON")

    fix = sub.add_parser("fix-inconsistencies", help="resolve orphaned processing records and stale locks")
    fix.add_argument("--config", required=True, help="YAML or JSON config file")
    fix.add_argument("--table", action="append", dest="tables", metavar="NAME", help="only this table")
    fix.add_argument("--json", action="store_true", help="print as JSON")

    unlock = sub.add_parser("force-unlock", help="release a table's lock whoever holds it (emergencies)")
    unlock.add_argument("--config", required=True, help="YAML or JSON config file")
    unlock.add_argument("--table", action="append", dest="tables", metavar="NAME",
                        help="only this table (default: every table whose lock is held)")
    unlock.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    for name, text, whole_table in (
        ("retry", "failed files -> pending with a fresh retry budget (all failed, or --file)", True),
        ("reprocess", "load completed files again; the reload replaces their rows", False),
        ("skip", "mark pending or failed files skipped (not loaded) with a reason", False),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument("--config", required=True, help="YAML or JSON config file")
        action.add_argument("--table", required=True, help="the table")
        action.add_argument("--file", action="append", dest="files", metavar="PATH", required=not whole_table,
                            help="a file of the table (repeatable)")
        action.add_argument("--reason", required=name == "skip", help="why, recorded in the event log")
        action.add_argument("--json", action="store_true", help="print as JSON")

    history = sub.add_parser("history", help="a table's file events: source changes and operator actions")
    history.add_argument("--config", required=True, help="YAML or JSON config file")
    history.add_argument("--table", required=True, help="the table")
    history.add_argument("--file", action="append", dest="files", metavar="PATH", help="only this file")
    history.add_argument("--json", action="store_true", help="print as JSON")

    reset = sub.add_parser("reset-state", help="forget which files were loaded so they load again (tables kept)")
    reset.add_argument("--config", required=True, help="YAML or JSON config file")
    reset.add_argument("--table", action="append", dest="tables", metavar="NAME", help="only this table")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    server = sub.add_parser("spark-connect-server",
                            help="run a Spark Connect server with Delta that runs attach to (spark.remote)")
    server.add_argument("--config", required=True, help="YAML or JSON config file (its spark.master and conf)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=None, help="port (default: spark.remote's, else 15002)")
    prepare = sub.add_parser("prepare-spark",
                             help="resolve the Spark jars and build the class archive that halves a JVM start")
    prepare.add_argument("--config", required=True, help="YAML or JSON config file (its spark.conf packages)")
    return parser


def _confirm(question: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    try:
        answer = input(f"{question} [y/N]: ")
    except EOFError:
        print("")
        return False
    return answer.strip().lower() in ("y", "yes")


def _spark_provider(settings: LoaderSettings) -> "Callable[[], SparkSession]":
    from loader_assets.resources.spark import get_or_create_spark

    return lambda: get_or_create_spark(settings.spark.master, settings.spark.app_name, dict(settings.spark.conf),
                                       settings.spark.remote)


def _print_consistency(report: "PipelineConsistency") -> None:
    data = report.to_json()
    tracker_issues = [issue for table in report.tables for issue in table.tracker_issues()]
    print("=== PIPELINE CONSISTENCY VALIDATION ===")
    print(f"Overall Status: {data['overall_status']}")
    print("")
    print(f"File Tracker Status: {'inconsistent' if tracker_issues else 'consistent'}")
    print(f"Total Files Checked: {data['total_files_checked']}")
    print(f"Inconsistencies Found: {data['inconsistencies_found']}")
    for issue in tracker_issues:
        print(f"  - {issue}")
    print("")
    print("Table Consistency:")
    for table in report.tables:
        issues = table.table_issues()
        print(f"  {'✗' if issues else '✓'} {table.table_name}")
        for issue in issues:
            print(f"    - {issue}")


def _print_fix(report: "FixReport") -> None:
    print("=== FIXING PIPELINE INCONSISTENCIES ===")
    print(f"Fixes Applied: {len(report.applied)}")
    print(f"Fixes Failed: {len(report.failed)}")
    print("")
    print("Actions taken:")
    for action in report.applied or ["  (nothing to fix)"]:
        print(f"  - {action}" if report.applied else action)
    for failure in report.failed:
        print(f"  ✗ {failure}")
    if report.needs_operator:
        print("")
        print("Needs an operator:")
        for item in report.needs_operator:
            print(f"  - {item}")


def _cmd_validate(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from loader_assets.operations import fix_inconsistencies, validate_consistency
    from loader_assets.resources.lock import run_ended_checker

    instance = open_instance()
    try:
        spark, ended = _spark_provider(settings), run_ended_checker(instance)
        fixed = None
        if args.fix:
            fixed = fix_inconsistencies(settings, spark, args.tables, ended)
        report = validate_consistency(settings, spark, args.tables, ended)
    finally:
        instance.dispose()
    if args.json:
        payload = report.to_json()
        if fixed is not None:
            payload["fix"] = fixed.to_json()
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
    else:
        if fixed is not None:
            _print_fix(fixed)
            print("")
        _print_consistency(report)
    return EXIT_OK if report.consistent else EXIT_FAILED


def _cmd_fix(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from loader_assets.operations import fix_inconsistencies
    from loader_assets.resources.lock import run_ended_checker

    instance = open_instance()
    try:
        report = fix_inconsistencies(settings, _spark_provider(settings), args.tables, run_ended_checker(instance))
    finally:
        instance.dispose()
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        _print_fix(report)
    return EXIT_OK if not (report.failed or report.needs_operator) else EXIT_FAILED


def _cmd_force_unlock(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from loader_assets.api import pipeline_status
    from loader_assets.operations import force_unlock

    names = args.tables or [s.table_name for s in pipeline_status(settings) if s.lock is not None]
    if not names:
        print("No pipeline lock is held.")
        return EXIT_OK
    code = EXIT_OK
    for name in names:
        settings.table(name)
        state = next(s for s in pipeline_status(settings) if s.table_name == name)
        if state.lock is None:
            print(f"{name}: no lock is held")
            continue
        print(f"{name}: current lock held by PID {state.lock['pid']} on {state.lock['hostname']} "
              f"since {state.lock['acquired_at']}"
              + (f" (stale: {state.lock_stale_reason})" if state.lock_stale_reason else " (the holder looks alive)"))
        if not _confirm("Are you sure you want to force release the lock?", args.yes):
            print("Aborted; the lock is unchanged.")
            code = EXIT_FAILED
            continue
        force_unlock(settings, name)
        print("✓ Pipeline lock force released")
    return code


def _cmd_reset(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from loader_assets.operations import reset_state

    names = args.tables or [t.table_name for t in settings.tables]
    for name in names:
        settings.table(name)
    print(f"This forgets which files of {', '.join(names)} were loaded, so every file in the landing directories "
          "loads again. The Delta tables are kept: a reloaded file replaces its own rows (append) or is recognised "
          "as already in the history (scd2), so nothing is duplicated.")
    if not _confirm("Reset the pipeline state?", args.yes):
        print("Aborted; nothing was changed.")
        return EXIT_FAILED
    for name in names:
        forgotten, kept = reset_state(settings, name)
        print(f"✓ {name}: forgot {forgotten} files; table {'kept' if kept else 'not created yet'}")
    return EXIT_OK


def _cmd_file_action(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from loader_assets.operations import reprocess_files, retry_files, skip_files

    if args.command == "retry":
        result = retry_files(settings, args.table, args.files, args.reason)
    elif args.command == "reprocess":
        result = reprocess_files(settings, args.table, args.files, args.reason)
    else:
        result = skip_files(settings, args.table, args.files, args.reason)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        verb = {"retry": "queued for retry", "reprocess": "queued for reprocessing", "skip": "skipped"}[args.command]
        print(f"{args.table}: {len(result.changed)} file(s) {verb}")
        for path in result.changed:
            print(f"  ✓ {path}")
        for path, why in result.refused.items():
            print(f"  ✗ {path}: {why}")
        if result.changed and args.command != "skip":
            print(f"They load with the next run of {args.table} (`loader-assets run --table {args.table}`, the "
                  "sensor, or a materialisation in the UI).")
    return EXIT_OK if not result.refused else EXIT_FAILED


def _cmd_history(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from loader_assets.operations import file_history

    events = file_history(settings, args.table, args.files)
    if args.json:
        print(json.dumps(events, indent=2, default=str))
        return EXIT_OK
    if not events:
        print(f"{args.table}: no file events recorded")
    for event in events:
        print(f"{event['event_time']:%Y-%m-%d %H:%M:%S}  {event['event']:<26} {event['file_path']}")
        print(f"    {event['detail']}  [{event['actor']}]")
    return EXIT_OK


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or ./.dagster_home seeded with ./dagster.yaml (or a minimal one: telemetry off), so CLI
    runs persist and show in the UI."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)
        return Path(home)
    path = Path(".dagster_home").resolve()
    path.mkdir(exist_ok=True)
    if not (path / "dagster.yaml").exists():
        if Path("dagster.yaml").exists():
            shutil.copy("dagster.yaml", path / "dagster.yaml")
        else:  # an instance config of its own, so Dagster neither warns that there is none nor asks about telemetry
            (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def open_instance() -> "dg.DagsterInstance":
    """The instance of $DAGSTER_HOME. Its sqlite schema is created under a file lock, because two CLI processes
    started together on a fresh home would otherwise race to create the same tables and one would crash."""
    import fcntl

    import dagster as dg

    home = ensure_dagster_home()
    with (home / ".loader_assets_init.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            instance = dg.DagsterInstance.get()
            instance.get_runs(limit=1)  # touches run and event storage so their schemas exist
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return instance


def _print_run(settings: LoaderSettings, summary: "RunSummary") -> None:
    from loader_assets.target import history_counts

    print("=== LOAD SUMMARY ===")
    print(f"Overall Status: {'SUCCESS' if summary.success else 'FAILED'}")
    print(f"Files discovered: {summary.total_files_discovered}")
    print(f"Files processed:  {summary.total_files_processed}")
    print(f"Files failed:     {summary.total_files_failed}")
    print(f"Rows loaded:      {summary.total_rows_loaded}")
    started = "yes" if summary.spark_session_started else "no"
    if summary.spark_session_started and settings.spark.remote:
        started = f"attached to Spark Connect at {settings.spark.remote}"
    print(f"Spark session started: {started}")
    print("")
    print("Tables:")
    for name, table in summary.tables.items():
        mark = "✓" if not (table.files_failed or table.errors) else "✗"
        print(f"  {mark} {name}: {table.files_processed} processed, {table.files_failed} failed, "
              f"{table.rows_loaded} rows -> {settings.table_path(name)}")
        spec = settings.table(name)
        if spec.is_scd2:
            history = history_counts(settings.table_path(name), spec.scd2_current_flag_column)
            if history:
                print(f"    history: {history[0]} versions, {history[1]} current, {history[0] - history[1]} closed")
        for path, error in list(table.failed_files.items())[:20]:
            print(f"    - failed: {path}: {error}")
        for error in table.errors[:5]:
            print(f"    - run error: {error}")


def _cmd_run(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from loader_assets.api import run_pipeline

    if args.tables:
        for name in args.tables:
            settings.table(name)  # ConfigError (exit 2) for an unknown table
    instance = open_instance()
    try:
        # Dagster's own log lines only from WARNING up (LOADER_ASSETS_LOG_LEVEL=INFO for all); on a terminal,
        # one progress line per run on stderr, so stdout stays the summary (or the --json document)
        summary = run_pipeline(settings, tables=args.tables, instance=instance, run_checks=not args.skip_checks,
                               log_level=os.environ.get("LOADER_ASSETS_LOG_LEVEL", "WARNING"),
                               progress=(lambda line: print(line, file=sys.stderr, flush=True))
                               if sys.stderr.isatty() else None)
    finally:
        instance.dispose()
    if args.json:
        print(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    else:
        _print_run(settings, summary)
    return EXIT_OK if summary.success else EXIT_FAILED


def _cmd_status(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from loader_assets.api import pipeline_status

    statuses = pipeline_status(settings)
    if args.json:
        print(json.dumps([s.__dict__ for s in statuses], indent=2, sort_keys=True, default=str))
        return EXIT_OK
    print("=== PIPELINE STATUS ===")
    for status in statuses:
        counts = ", ".join(f"{k}: {v}" for k, v in status.status_counts.items())
        print(f"{status.table_name}: {counts}")
        if status.lock is None:
            print("  lock: free")
        else:
            stale = f" (STALE: {status.lock_stale_reason})" if status.lock_stale_reason else ""
            print(f"  lock: held by PID {status.lock['pid']} on {status.lock['hostname']} since "
                  f"{status.lock['acquired_at']}, until {status.lock['timeout_at']}{stale}")
    return EXIT_OK


def _cmd_connect_server(args: argparse.Namespace, settings: LoaderSettings) -> int:
    from urllib.parse import urlsplit

    from loader_assets.resources import spark_connect
    from loader_assets.resources.spark import spark_config

    remote_port = urlsplit(settings.spark.remote.replace("sc://", "http://", 1)).port if settings.spark.remote else None
    port = args.port or remote_port or spark_connect.DEFAULT_PORT
    config = spark_config(settings.spark.master, f"{settings.spark.app_name} (Spark Connect server)",
                          dict(settings.spark.conf))
    return spark_connect.serve(spark_connect.server_command(config, args.host, port), args.host, port)


def _cmd_prepare_spark(args: argparse.Namespace, settings: LoaderSettings) -> int:
    """Everything a run's Spark start can do ahead, once per machine: the jars resolved from Maven Central and
    Spark's classes archived for class-data sharing (``resources/jvm_archive.py``). A no-op when both exist."""
    import time

    from loader_assets.resources import jvm_archive
    from loader_assets.resources.spark import spark_config

    started = time.monotonic()
    packages = {k: v for k, v in settings.spark.conf.items() if k in ("spark.jars.packages", "spark.jars")}
    jars = spark_config("local[1]", "loader-assets", packages)["spark.jars"].split(",")
    archive = jvm_archive.build(conf=packages)
    print(f"Spark jars: {len(jars)} resolved in {Path(jars[0]).parent if jars and jars[0] else '-'}")
    print(f"Spark class archive: {archive or 'off (' + jvm_archive.DISABLE_ENV + ' is set, or no java)'}"
          f" ({time.monotonic() - started:.0f} s)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOADER_ASSETS_LOG_LEVEL", "WARNING"))
    try:
        settings = load_settings(args.config)
        commands = {
            "run": _cmd_run,
            "status": _cmd_status,
            "validate-consistency": _cmd_validate,
            "fix-inconsistencies": _cmd_fix,
            "force-unlock": _cmd_force_unlock,
            "reset-state": _cmd_reset,
            "retry": _cmd_file_action,
            "reprocess": _cmd_file_action,
            "skip": _cmd_file_action,
            "history": _cmd_history,
            "spark-connect-server": _cmd_connect_server,
            "prepare-spark": _cmd_prepare_spark,
        }
        return commands[args.command](args, settings)
    except ConfigError as error:
        print(f"loader-assets: {error}", file=sys.stderr)
        return EXIT_USAGE
    except LoaderError as error:
        print(f"loader-assets: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:  # a store that cannot be reached or read (a missing bucket, a refused connection)
        logging.getLogger(__name__).debug("storage error", exc_info=True)
        print(f"loader-assets: storage error: {error}", file=sys.stderr)
        return EXIT_FAILED


def entrypoint() -> None:
    """Console script. Exits with ``os._exit`` after flushing: the exit code reflects the work, not the
    interpreter teardown, during which native libraries have been seen to abort (docs/ARCHITECTURE.md, "Traps")."""
    try:
        code = main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
