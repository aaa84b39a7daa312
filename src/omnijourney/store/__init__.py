"""State storage: engine, sessions, shared column types, migrations. Owns no domain tables."""
