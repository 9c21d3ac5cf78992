"""Storage: database engines (SQLite WAL/FULL, PostgreSQL) shared by every store."""

from fogcoord.storage.engine import create_engine, drop_schema, is_sqlite
from fogcoord.storage.service import StorageService

__all__ = ["StorageService", "create_engine", "drop_schema", "is_sqlite"]
