"""Module-scoped database and server fixtures (tests/moddb.py) for the tests of this package."""

from tests.moddb import mod_client, mod_engine, mod_server, mod_url, mod_world  # noqa: F401
