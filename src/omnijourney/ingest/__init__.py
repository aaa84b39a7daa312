"""Collect: Segment-compatible tracking API, validation, durable idempotent storage, bulk import."""
