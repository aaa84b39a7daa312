"""Trust: sources with write keys and channels, API tokens with roles, role checks."""
