"""What a table's materialisation tells the operator (docs/ARCHITECTURE.md, "What a materialisation reports").

A run materialises one partition or a range of them, so the metadata has three scopes, named so a sum over
partitions in the UI never counts a file twice:

- **the partition's own numbers**, one set per partition event (``partition_metadata``): the files of that
  partition this run loaded, failed, skipped or left waiting, their rows, a table of those files (path, status,
  rows, commit version, error), and the partition's file counts by status over all runs;
- **the run's totals**, the same on every event of the run and prefixed ``run_`` (``run_metadata``): batches,
  commit version, files and rows over all partitions of the run;
- **the table's state** from its Delta log and tracker (``table_metadata``), on every materialisation, one that
  loaded nothing included: ``dagster/row_count``, ``dagster/column_schema``, ``dagster/table_name``,
  ``dagster/uri``, ``table_version``, the files by status as ``tracker_<status>`` (for scd2 also
  ``history_versions``, ``history_current``, ``history_closed``). Reading it costs a delta-rs log read (for
  scd2 one boolean column), no Spark.
"""

from collections import Counter
from typing import Any

import dagster as dg
import pyarrow as pa

from loader_assets.core.states import FileStatus
from loader_assets.load import LoadOutcome
from loader_assets.settings import LoaderSettings, TableSettings, quarantine_location
from loader_assets.target import history_counts, target_snapshot

FILES_SHOWN = 50  # rows of a files table; a larger list says how many it left out
TRACKER_COLUMNS = ["file_path", "partition_key", "status", "row_count", "target_version", "error_message"]
FILES_SCHEMA = dg.TableSchema(columns=[
    dg.TableColumn("file", "string"), dg.TableColumn("status", "string"), dg.TableColumn("rows", "int"),
    dg.TableColumn("commit_version", "int"), dg.TableColumn("error", "string"),
])


def table_metadata(settings: LoaderSettings, table: TableSettings, status_counts: dict[str, int]) -> dict[str, Any]:
    """The table's own state: name, URI, its files by status (``tracker_<status>``: numbers Dagster plots over
    time) and, once it has been written, version, rows and columns."""
    uri = settings.table_path(table.table_name)
    metadata: dict[str, Any] = {"dagster/table_name": table.table_name, "dagster/uri": uri, "table_uri": uri,
                                **{f"tracker_{status}": count for status, count in status_counts.items()}}
    snapshot = target_snapshot(uri)
    if snapshot is not None:
        metadata["table_version"] = snapshot.version
        if snapshot.row_count is not None:
            metadata["dagster/row_count"] = snapshot.row_count
        metadata["dagster/column_schema"] = dg.TableSchema(
            columns=[dg.TableColumn(name, type_name) for name, type_name in snapshot.columns])
        if table.is_scd2:  # the history at a glance: versions, current, closed
            counts = history_counts(uri, table.scd2_current_flag_column)
            if counts is not None:
                metadata.update({"history_versions": counts[0], "history_current": counts[1],
                                 "history_closed": counts[0] - counts[1]})
    return metadata


def run_metadata(outcome: LoadOutcome, settings: LoaderSettings, table: TableSettings,
                 partitions: int) -> dict[str, Any]:
    """The run's totals over every partition it materialised (each key says ``run_``)."""
    metadata: dict[str, Any] = {
        "run_partitions": partitions,
        "run_files_discovered": outcome.discovered,
        "run_files_deferred": outcome.deferred,
        "run_files_loaded": len(outcome.loaded),
        "run_files_failed": len(outcome.failed),
        "run_files_skipped": len(outcome.skipped),
        "run_files_waiting": len(outcome.waiting),
        "run_num_rows": outcome.num_rows,
    }
    if table.keeps_changes:  # late rows re-thread an scd2 history; in scd1 they are stale and change nothing
        metadata["run_rows_rethreaded" if table.is_scd2 else "run_rows_stale"] = outcome.late_rows
    if outcome.batch_ids:
        metadata.update({
            "run_batch_id": ", ".join(outcome.batch_ids),
            "run_batch_seq": max(outcome.batch_seqs),
            "run_delta_version": max(outcome.versions),
            "run_replaced_existing_rows": outcome.replaced,
            # how many of the batches the small-batch engine committed with delta-rs, without Spark
            "run_batches_without_spark": outcome.small_batches,
        })
    if outcome.split:
        metadata["run_split_into_batches"] = len(outcome.batch_ids)
    if table.expectations:
        metadata["run_expectations"] = dg.MetadataValue.json(expectation_summary(outcome, list(outcome.expectations)))
    if outcome.quarantined:
        metadata["run_rows_quarantined"] = sum(outcome.quarantined.values())
        metadata["quarantine_uri"] = quarantine_location(settings.target_root, table.table_name)
    return metadata


def expectation_summary(outcome: LoadOutcome, paths: list[str]) -> dict[str, Any]:
    """Rows checked and, per expectation, rows failed and files, over ``paths`` of this run."""
    checked, failed, files = 0, Counter[str](), Counter[str]()
    for path in paths:
        results = outcome.expectations.get(path) or {}
        checked += int(results.get("rows") or 0)
        for name, found in (results.get("failed") or {}).items():
            failed[name] += int(found["rows"])
            files[name] += 1
    return {"rows_checked": checked,
            "failed": {name: {"rows": failed[name], "files": files[name]} for name in sorted(failed)}}


def _touched(outcome: LoadOutcome) -> dict[str, tuple[str, str | None]]:
    """Every file this run decided, with what happened to it and why (errors, skip reasons)."""
    touched: dict[str, tuple[str, str | None]] = {}
    touched.update({path: ("waiting", "still being written; back to pending") for path in outcome.waiting})
    touched.update({path: ("skipped", reason) for path, reason in outcome.skipped.items()})
    touched.update({path: ("failed", error) for path, error in outcome.failed.items()})
    touched.update({path: ("loaded", None) for path in outcome.loaded})
    return touched


def files_table(rows: list[dict[str, Any]]) -> dg.TableMetadataValue:
    """A bounded table of files: path, status, rows, commit version, error."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord({
            "file": row["file"], "status": row["status"], "rows": row.get("rows"),
            "commit_version": row.get("commit_version"), "error": row.get("error"),
        }) for row in rows[:FILES_SHOWN]],
        schema=FILES_SCHEMA,
    )


def partition_metadata(outcome: LoadOutcome, tracker_rows: pa.Table,
                       partition_keys: list[str]) -> dict[str, dict[str, Any]]:
    """Per partition of the run: its files' numbers in this run and its files' states over all runs.

    ``tracker_rows`` are the tracker's rows (``TRACKER_COLUMNS``) of the run's partitions."""
    rows_by_path = {row["file_path"]: row for row in tracker_rows.to_pylist()}
    touched = _touched(outcome)
    states_of: dict[str, Counter[str]] = {}  # one pass over the rows, not one per partition
    for row in rows_by_path.values():
        states_of.setdefault(row["partition_key"], Counter())[row["status"]] += 1
    touched_of: dict[str, list[str]] = {}
    for path in sorted(touched):
        touched_of.setdefault(rows_by_path.get(path, {}).get("partition_key"), []).append(path)
    result: dict[str, dict[str, Any]] = {}
    for key in partition_keys:
        states = states_of.get(key, Counter())
        mine = touched_of.get(key, [])
        what = Counter(touched[path][0] for path in mine)
        loaded = [path for path in mine if touched[path][0] == "loaded"]
        metadata: dict[str, Any] = {
            "files_loaded": what["loaded"],
            "files_failed": what["failed"],
            "files_skipped": what["skipped"],
            "files_waiting": what["waiting"],
            "num_rows": sum(outcome.rows.get(path, 0) for path in loaded),
            "partition_files": dg.MetadataValue.json({s.value: states.get(s.value, 0) for s in FileStatus}),
        }
        if mine:
            table_rows = [{
                "file": path,
                "status": rows_by_path[path]["status"],
                "rows": outcome.rows.get(path) if touched[path][0] == "loaded" else None,
                "commit_version": rows_by_path[path]["target_version"] if touched[path][0] == "loaded" else None,
                "error": touched[path][1],
            } for path in mine]
            metadata["files"] = files_table(table_rows)
            if len(mine) > FILES_SHOWN:
                metadata["files_shown"] = f"{FILES_SHOWN} of {len(mine)}"
        if outcome.expectations:
            metadata["expectations"] = dg.MetadataValue.json(expectation_summary(outcome, mine))
        failed = [{"file": path, "error": touched[path][1]} for path in mine if touched[path][0] == "failed"]
        if failed:
            metadata["failed_files"] = dg.MetadataValue.json(failed[:FILES_SHOWN])
        result[key] = metadata
    return result


FAILED_FILES_KEY = "loader_assets/failed_files"  # marks the Failure of a run whose files failed (api.run_pipeline)


def failed_files_of(tracker_rows: pa.Table) -> list[tuple[str, str | None, str | None]]:
    """(file, partition, error) of the failed files among ``tracker_rows`` (``TRACKER_COLUMNS``)."""
    return sorted((row["file_path"], row["partition_key"], row["error_message"]) for row in tracker_rows.to_pylist()
                  if row["status"] == FileStatus.FAILED.value)


def failed_files_failure(table_name: str, outcome: LoadOutcome, failed: list[tuple[str, str | None, str | None]],
                         shared: dict[str, Any]) -> dg.Failure:
    """The step's failure when files of the run's partitions are failed (``on_failed_file: fail_partition``),
    in this run or earlier ones and not yet resolved: it names the table, each file and its cause, and says what
    was committed all the same. Their partitions get no materialization, so Dagster shows them failed; the
    others were materialized just before."""
    partitions = sorted({key for _, key, _ in failed if key})
    listed = "; ".join(f"{path}: {error}" for path, _, error in failed[:5])
    more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
    where = f" in partition(s) {', '.join(partitions)}" if partitions else ""
    now = sum(1 for path, _, _ in failed if path in outcome.failed)
    description = (f"table {table_name}: {len(failed)} file(s) failed{where} ({now} in this run): {listed}{more}. "
                   f"The {len(outcome.loaded)} file(s) this run loaded are committed and stay loaded; a failed file "
                   "is retried by a later run while retries remain (`loader-assets status`, or the no_failed_files "
                   "check, says what to do)")
    return dg.Failure(description=description, allow_retries=False, metadata={
        FAILED_FILES_KEY: dg.MetadataValue.json([{"file": path, "partition": key, "error": error}
                                                 for path, key, error in failed[:FILES_SHOWN]]),
        "failed_partitions": dg.MetadataValue.json(partitions),
        **{key: value for key, value in shared.items() if key.startswith("run_")},
    })
