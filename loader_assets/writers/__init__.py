"""How a claimed batch becomes exactly one commit on its target table, per loading strategy."""

from loader_assets.settings import LoaderSettings, TableSettings
from loader_assets.writers.append import AppendWriter
from loader_assets.writers.base import TableWriter
from loader_assets.writers.scd2 import Scd2Writer


def writer_for(table: TableSettings, settings: LoaderSettings) -> TableWriter:
    """The writer of ``table``'s loading strategy."""
    return Scd2Writer(table, settings) if table.is_scd2 else AppendWriter(table, settings)
