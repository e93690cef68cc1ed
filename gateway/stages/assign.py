"""Stage 2: assign the user to an experiment variant, which decides the model that ranks.

Assignment is the deterministic hash split of `ab.assignment`, with the live overrides of the
experiment controller applied (rollback, promotion, stop, bandit weights) by the routing table,
which a poller refreshes every few seconds: decisions reach every process without a restart.
"""

from __future__ import annotations

from ab.routing import RoutedAssignment, RoutingTable


def assign_variant(user_id: str, routing: RoutingTable) -> RoutedAssignment | None:
    """The user's variant in the first running experiment that includes them, else None
    (the user then gets the default model)."""
    return routing.assign(user_id)
