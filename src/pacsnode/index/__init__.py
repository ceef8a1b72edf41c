"""The index: SQLAlchemy Core schema and the repository that reads and writes it."""
