"""The database schema, written once: tables, indexes and migrations rendered per SQL dialect.

Each migration is a list of steps (:class:`Table`, :class:`Index`, :class:`AddColumn`); the
stores apply migration ``n`` as the statements :func:`migration_statements` renders for their
dialect, and record ``n`` in ``schema_version``. A database is upgraded by the migrations after the
version it records; one whose version is newer than :data:`SCHEMA_VERSION` is refused. Migrations
already released never change: a new column or index is a new migration at the end.

The dialects differ only in column types (:data:`COLUMN_TYPES`). No table uses an
auto-incremented key: run numbers (``seq``) are assigned by the store, per job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]


class ColumnType(Enum):
    """A column's type, independent of the dialect."""

    TEXT = "text"
    INTEGER = "integer"  # fits 32 bits
    BIGINT = "bigint"  # counters that may outgrow 32 bits
    REAL = "real"  # 64-bit floating point


COLUMN_TYPES: dict[Dialect, dict[ColumnType, str]] = {
    "sqlite": {
        ColumnType.TEXT: "TEXT",
        ColumnType.INTEGER: "INTEGER",
        ColumnType.BIGINT: "INTEGER",  # SQLite's INTEGER holds 64 bits
        ColumnType.REAL: "REAL",
    },
    "postgresql": {
        ColumnType.TEXT: "TEXT",
        ColumnType.INTEGER: "INTEGER",
        ColumnType.BIGINT: "BIGINT",
        ColumnType.REAL: "DOUBLE PRECISION",
    },
}


@dataclass(frozen=True)
class Column:
    """A column: ``NOT NULL`` unless ``nullable``; ``default`` rendered as an SQL literal."""

    name: str
    type: ColumnType
    nullable: bool = False
    default: str | int | None = None

    def render(self, dialect: Dialect, *, primary_key: bool = False) -> str:
        """The column's definition in ``dialect``."""
        parts = [self.name, COLUMN_TYPES[dialect][self.type]]
        if primary_key:
            parts.append("PRIMARY KEY")
        elif not self.nullable:
            parts.append("NOT NULL")
        if self.default is not None:
            literal = "'" + self.default.replace("'", "''") + "'" if isinstance(self.default, str) else str(self.default)
            parts.append(f"DEFAULT {literal}")
        return " ".join(parts)


@dataclass(frozen=True)
class Table:
    """``CREATE TABLE``; a one-column primary key is written on its column."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]

    def render(self, dialect: Dialect) -> str:
        """The ``CREATE TABLE`` statement in ``dialect``."""
        single = self.primary_key[0] if len(self.primary_key) == 1 else None
        lines = [c.render(dialect, primary_key=c.name == single) for c in self.columns]
        if single is None:
            lines.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE {self.name} (\n    " + ",\n    ".join(lines) + "\n)"


@dataclass(frozen=True)
class Index:
    """``CREATE [UNIQUE] INDEX``."""

    name: str
    table: str
    columns: tuple[str, ...]
    unique: bool = False

    def render(self, dialect: Dialect) -> str:
        """The ``CREATE INDEX`` statement (the same in every dialect)."""
        unique = "UNIQUE " if self.unique else ""
        return f"CREATE {unique}INDEX {self.name} ON {self.table} ({', '.join(self.columns)})"


@dataclass(frozen=True)
class AddColumn:
    """``ALTER TABLE ... ADD COLUMN`` (a ``NOT NULL`` column needs a default for existing rows)."""

    table: str
    column: Column

    def render(self, dialect: Dialect) -> str:
        """The ``ALTER TABLE`` statement in ``dialect``."""
        return f"ALTER TABLE {self.table} ADD COLUMN {self.column.render(dialect)}"


Step = Table | Index | AddColumn

TEXT, INTEGER, BIGINT, REAL = ColumnType.TEXT, ColumnType.INTEGER, ColumnType.BIGINT, ColumnType.REAL

JOBS = Table(
    "jobs",
    (
        Column("job_id", TEXT),
        Column("spec", TEXT),  # JobSpec.to_dict() as JSON
        Column("policy_state", TEXT),  # the policy's state as JSON (may hold Infinity)
        Column("created_unix_s", REAL),
        Column("decisions", BIGINT, default=0),
    ),
    primary_key=("job_id",),
)

RUNS = Table(
    "runs",
    (
        Column("run_id", TEXT),
        Column("job_id", TEXT),
        Column("seq", BIGINT),
        Column("state", TEXT),
        Column("batch_size", INTEGER),
        Column("power_limit_w", REAL),
        Column("profile_power_limits_w", TEXT),  # JSON list
        Column("phase", TEXT),
        Column("explanation", TEXT),
        Column("gpu_model", TEXT),
        Column("gpu_count", INTEGER),
        Column("max_power_w", REAL),
        Column("request_id", TEXT),
        Column("created_unix_s", REAL),
        Column("lease_expires_unix_s", REAL),
        Column("finished_unix_s", REAL),
        Column("energy_j", REAL),
        Column("time_s", REAL),
        Column("epochs", REAL),
        Column("reached_target", INTEGER),  # 0 or 1
        Column("cost", REAL),
        Column("final_metric", REAL, nullable=True),
        Column("reason", TEXT),
        Column("profiled", INTEGER),  # 0 or 1
        Column("epoch_cost", REAL, nullable=True),
    ),
    primary_key=("run_id",),
)

PROFILES = Table(
    "profiles",
    (
        Column("job_id", TEXT),
        Column("gpu_model", TEXT),
        Column("batch_size", INTEGER),
        Column("power_limit_w", REAL),
        Column("average_power_w", REAL),
        Column("time_per_epoch_s", REAL),
        Column("run_id", TEXT),
    ),
    primary_key=("job_id", "gpu_model", "batch_size", "power_limit_w"),
)

MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    # 1: initial schema
    (
        JOBS,
        RUNS,
        Index("runs_job_seq", "runs", ("job_id", "seq"), unique=True),
        Index("runs_job_request", "runs", ("job_id", "request_id")),
        Index("runs_state_lease", "runs", ("state", "lease_expires_unix_s")),
        PROFILES,
    ),
    # 2: a revision token per job, changed by every write to the job (see store/sql.py)
    (AddColumn("jobs", Column("revision", TEXT, default="")),),
    # 3: how each run's power limit was applied ("" = not reported, "nvml", "agent", "none", "simulated")
    (AddColumn("runs", Column("power_limit_control", TEXT, default="")),),
    # 4: where a run's power profile may stop (Decision.profile_stop_ratio; 0 = every listed limit)
    (AddColumn("runs", Column("profile_stop_ratio", REAL, default=0)),),
)
SCHEMA_VERSION = len(MIGRATIONS)

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
"""Where a database records the migrations applied to it (one row per version)."""


def migration_statements(version: int, dialect: Dialect) -> list[str]:
    """The statements of migration ``version`` (1-based) in ``dialect``."""
    return [step.render(dialect) for step in MIGRATIONS[version - 1]]
