"""The index: the SQLAlchemy Core tables, the database, and the migrations.

* ``metadata.py``: the one ``MetaData`` and the column builders;
* ``schema.py``: the archive's tables (patients, studies, series,
  instances, sequence items, change feed, remote nodes), built from the
  attribute catalogue, and the import of every feature's tables;
* ``workitems.py``, ``jobs_tables.py``, ``automation_tables.py``,
  ``cluster_tables.py``, ``access_tables.py``: the tables of one feature each;
* ``db.py``: ``Database`` — the engine (SQLite or PostgreSQL), read and
  write transactions, the write lock, statistics;
* ``migrations.py``: columns added since a release, one-time rewrites.

There is no repository layer: each feature writes its own SQL, in
SQLAlchemy Core, against these tables and through ``Database.read`` /
``Database.write`` — the writes of an instance in ``ingest.py`` and
``delete.py``, the searches in ``query/`` (compiled by ``query/sql.py``),
the reads of stored instances in ``retrieve.py``, and the feature modules
(``ups.py``, ``automation.py``, ``cluster.py``, ``audit.py``, ``check.py``,
``remote/jobs.py``, ``remote/registry.py``, ``access/tokens.py``,
``web/changes.py``, ``web/api.py``, ``web/dicomweb.py``).
"""
