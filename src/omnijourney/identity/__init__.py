"""Unify: identity resolution across devices and channels, with guards, provenance and unmerge."""
