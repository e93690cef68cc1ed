"""Stage 2: assign the user to an experiment variant, which decides the model that ranks.

Assignment is the deterministic hash split of `ab.assignment`, with the live overrides of the
experiment controller applied (rollback, promotion, stop, bandit weights) by the routing table,
which a poller refreshes every few seconds: decisions reach every process without a restart.
"""

from __future__ import annotations

from ab.routing import RoutingTable, UserArms


def assign_variant(user_id: str, routing: RoutingTable) -> UserArms | None:
    """The user's arm in every layer of running experiments that includes them (within a
    layer, the first experiment in config order), else None (the default model and list)."""
    return routing.arms(user_id)
