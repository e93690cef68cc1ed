"""The experiment end-to-end tests use the real Redis and Postgres of the store tests."""

from tests.integration.stores.conftest import (  # noqa: F401
    postgres_server,
    redis_server,
)
