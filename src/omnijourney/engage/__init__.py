"""Engage: segments, recommendations (docs/ENGAGE.md)."""
