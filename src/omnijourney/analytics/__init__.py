"""Measure: the event lake (Parquet, exported exactly once) and journey analytics on DuckDB or Spark."""
