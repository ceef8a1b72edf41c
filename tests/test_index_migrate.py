"""An index made by an earlier release gets the columns added since, at
start-up, with its rows kept (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, create_engine, select

from pacsnode.index.db import Database
from pacsnode.index.jobs_tables import jobs


def test_an_old_jobs_table_gets_the_new_columns(database_url: str) -> None:
    old = MetaData()
    kept = [c._copy() for c in jobs.columns
            if c.name not in ("peer_aet", "peer_host", "peer_port", "destination")]
    Table("jobs", old, *kept)
    engine = create_engine(database_url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["jobs"].insert().values(
            id="j1", kind="retrieve", node="PACS", level="STUDY", study_uid="1.2",
            series_uid="", method="move", state="succeeded", completed=3, failed=0,
            warning=0, error="", created=1.0, updated=2.0, owner="", cancel_requested=False,
            requested_by=""))
    engine.dispose()
    for _ in range(2):  # idempotent: the second start finds nothing to add
        db = Database(database_url)
        with db.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == "j1")).one()
        db.dispose()
        assert (row.node, row.completed, row.peer_aet, row.peer_port, row.destination) == \
            ("PACS", 3, "", 0, "")


def test_a_not_null_column_without_default_is_refused() -> None:
    from pacsnode.index.migrations import _column_ddl
    engine = create_engine("sqlite://")
    t = Table("t", MetaData(), Column("id", Integer, primary_key=True),
              Column("x", String(8), nullable=False), Column("y", Float, nullable=True))
    try:
        _column_ddl(engine, t.c.x)
    except ValueError as exc:
        assert "t.x" in str(exc)
    else:
        raise AssertionError("accepted")
    assert _column_ddl(engine, t.c.y) == 'ADD COLUMN "y" FLOAT'
