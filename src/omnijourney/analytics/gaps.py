"""Journey gap report and stage KPIs (placeholder until written)."""
