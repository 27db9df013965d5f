"""How a claimed batch becomes exactly one commit on its target table, per loading strategy."""

from loader_assets.settings import LoaderSettings, TableSettings
from loader_assets.writers.append import AppendWriter
from loader_assets.writers.base import TableWriter
from loader_assets.writers.keyed import KeyedWriter


def writer_for(table: TableSettings, settings: LoaderSettings) -> TableWriter:
    """The writer of ``table``'s loading strategy."""
    return KeyedWriter(table, settings) if table.keeps_changes else AppendWriter(table, settings)
