"""Experiment metrics from Postgres, aggregated at the user level (the randomisation unit).

Population: the users with at least one exposure of the experiment in the window; a user
belongs to each variant they were exposed to (normally exactly one).

Attribution of an outcome event (`events` table of the feature service) to a variant:

1. the variant of the exposure with the same `request_id`, when there is one;
2. otherwise the user's assignment, `ab.assignment.assign` with the configured experiment
   (computed here in Python and passed to the query as arrays).

An event counts for a (user, variant) pair when it is attributed to that variant, happened at
or after the user's first exposure to it and before the window's end. Events attributed to a
variant the user was never exposed to (or to no variant: outside the coverage) are dropped.

Per user: impressions (type 1), clicks (type 2), purchases (type 5 events), revenue (sum of
purchase revenue) and orders (distinct purchase timestamps: the lines of one checkout share
its timestamp). Per variant, the sufficient statistics of the engine in `ab.statistics`:

==================== ================ ============================================
metric               kind             per-user numerator / denominator
==================== ================ ============================================
ctr                  RatioStats       clicks / impressions
conversion_rate      RatioStats       purchases / clicks
revenue_per_user     MeanStats        revenue (zeros included, n = exposed users)
average_order_value  RatioStats       revenue / orders
==================== ================ ============================================

All values travel as query parameters. The per-user CTE uses the events index on
(user_id, type, ts) through the join on the exposed users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, TypeAlias

import asyncpg

from ab.assignment import assign
from ab.config import ExperimentConfig
from ab.statistics import MeanStats, Moments, RatioStats, StatisticsError

MetricName: TypeAlias = Literal["ctr", "conversion_rate", "revenue_per_user", "average_order_value"]
METRICS: tuple[MetricName, ...] = (
    "ctr",
    "conversion_rate",
    "revenue_per_user",
    "average_order_value",
)

IMPRESSION, CLICK, PURCHASE = 1, 2, 5

_EXPOSED_USERS = """
SELECT DISTINCT user_id FROM exposures
WHERE experiment = $1
  AND ($2::timestamptz IS NULL OR ts >= $2)
  AND ($3::timestamptz IS NULL OR ts < $3)
"""

_VARIANT_SUMS = """
WITH exposed AS (
    SELECT variant, user_id, min(ts) AS first_ts
    FROM exposures
    WHERE experiment = $1
      AND ($2::timestamptz IS NULL OR ts >= $2)
      AND ($3::timestamptz IS NULL OR ts < $3)
    GROUP BY variant, user_id
),
assigned AS (
    SELECT user_id, variant FROM unnest($4::text[], $5::text[]) AS a(user_id, variant)
),
attributed AS (
    SELECT u.variant, u.user_id, e.type, e.revenue, e.ts
    FROM exposed u
    JOIN events e
      ON e.user_id = u.user_id
     AND e.type = ANY($6::smallint[])
     AND e.ts >= u.first_ts
     AND ($3::timestamptz IS NULL OR e.ts < $3)
    LEFT JOIN exposures x ON x.request_id = e.request_id AND x.experiment = $1
    LEFT JOIN assigned a ON a.user_id = e.user_id
    WHERE COALESCE(x.variant, a.variant) = u.variant
),
counted AS (
    SELECT variant, user_id,
           (count(*) FILTER (WHERE type = 1))::float8 AS impressions,
           (count(*) FILTER (WHERE type = 2))::float8 AS clicks,
           (count(*) FILTER (WHERE type = 5))::float8 AS purchases,
           coalesce(sum(revenue) FILTER (WHERE type = 5), 0)::float8 AS revenue,
           (count(DISTINCT ts) FILTER (WHERE type = 5))::float8 AS orders
    FROM attributed
    GROUP BY variant, user_id
),
per_user AS (
    -- every exposed user, with zeros where nothing was attributed
    SELECT u.variant, u.user_id,
           coalesce(c.impressions, 0) AS impressions, coalesce(c.clicks, 0) AS clicks,
           coalesce(c.purchases, 0) AS purchases, coalesce(c.revenue, 0) AS revenue,
           coalesce(c.orders, 0) AS orders
    FROM exposed u
    LEFT JOIN counted c ON c.variant = u.variant AND c.user_id = u.user_id
)
SELECT variant,
       count(*) AS users,
       sum(impressions) AS impressions, sum(impressions * impressions) AS impressions_sq,
       sum(clicks) AS clicks, sum(clicks * clicks) AS clicks_sq,
       sum(clicks * impressions) AS clicks_x_impressions,
       sum(purchases) AS purchases, sum(purchases * purchases) AS purchases_sq,
       sum(purchases * clicks) AS purchases_x_clicks,
       sum(revenue) AS revenue, sum(revenue * revenue) AS revenue_sq,
       sum(orders) AS orders, sum(orders * orders) AS orders_sq,
       sum(revenue * orders) AS revenue_x_orders
FROM per_user
GROUP BY variant
ORDER BY variant
"""


@dataclass(frozen=True, slots=True)
class VariantSums:
    """Per-user sums of one variant: everything the statistics engine needs."""

    variant: str
    users: int
    """Exposed users (the `n` of every metric)."""
    impressions: float
    impressions_sq: float
    clicks: float
    clicks_sq: float
    clicks_x_impressions: float
    purchases: float
    purchases_sq: float
    purchases_x_clicks: float
    revenue: float
    revenue_sq: float
    orders: float
    orders_sq: float
    revenue_x_orders: float

    def stats(self, metric: MetricName) -> MeanStats | RatioStats | None:
        """The metric's sufficient statistics, None while undefined (fewer than 2 users, a
        zero denominator)."""
        try:
            if metric == "revenue_per_user":
                return MeanStats(self.users, self.revenue, self.revenue_sq)
            num, num_sq, den, den_sq, prod = {
                "ctr": (
                    self.clicks,
                    self.clicks_sq,
                    self.impressions,
                    self.impressions_sq,
                    self.clicks_x_impressions,
                ),
                "conversion_rate": (
                    self.purchases,
                    self.purchases_sq,
                    self.clicks,
                    self.clicks_sq,
                    self.purchases_x_clicks,
                ),
                "average_order_value": (
                    self.revenue,
                    self.revenue_sq,
                    self.orders,
                    self.orders_sq,
                    self.revenue_x_orders,
                ),
            }[metric]
            return RatioStats(self.users, Moments(num, num_sq), Moments(den, den_sq), prod)
        except StatisticsError:
            return None

    def value(self, metric: MetricName) -> float | None:
        """The metric's point value (ratio of sums, or mean), None while undefined."""
        if metric == "revenue_per_user":
            return self.revenue / self.users if self.users else None
        num, den = {
            "ctr": (self.clicks, self.impressions),
            "conversion_rate": (self.purchases, self.clicks),
            "average_order_value": (self.revenue, self.orders),
        }[metric]
        return num / den if den else None

    def as_dict(self) -> dict[str, Any]:
        """The sums as a JSON-ready mapping (audit evidence, reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _float(value: Any) -> float:
    return 0.0 if value is None else float(value)


def assignments(
    experiment: ExperimentConfig, user_ids: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(user ids, variants) of the users `ab.assignment.assign` places in an arm."""
    users: list[str] = []
    variants: list[str] = []
    for user_id in user_ids:
        found = assign(experiment, user_id)
        if found is not None:
            users.append(user_id)
            variants.append(found.variant)
    return users, variants


async def fetch_variant_sums(
    pool: asyncpg.Pool,
    experiment: ExperimentConfig,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, VariantSums]:
    """Per-variant user-level sums of `experiment` for exposures in [start, end).

    Users are assigned with the configured experiment (not with routing overrides), forced
    enabled, so attribution does not change when an experiment is stopped.
    """
    config = experiment.model_copy(update={"enabled": True})
    async with pool.acquire() as connection:
        rows = await connection.fetch(_EXPOSED_USERS, experiment.name, start, end)
        users, variants = assignments(config, [row["user_id"] for row in rows])
        rows = await connection.fetch(
            _VARIANT_SUMS,
            experiment.name,
            start,
            end,
            users,
            variants,
            [IMPRESSION, CLICK, PURCHASE],
        )
    out: dict[str, VariantSums] = {}
    for row in rows:
        values = {f.name: _float(row[f.name]) for f in fields(VariantSums)[2:]}
        out[row["variant"]] = VariantSums(variant=row["variant"], users=int(row["users"]), **values)
    return out


def day_ends(first: date, last: date) -> list[datetime]:
    """The UTC midnights that end each day from `first` to `last`, inclusive."""
    days = (last - first).days + 1
    return [
        datetime.combine(first + timedelta(days=i + 1), time(), tzinfo=UTC)
        for i in range(max(days, 0))
    ]


async def fetch_cumulative_daily(
    pool: asyncpg.Pool,
    experiment: ExperimentConfig,
    *,
    start: datetime | None,
    first_day: date,
    last_day: date,
) -> list[tuple[date, dict[str, VariantSums]]]:
    """Cumulative per-variant sums at the end of each day (for lift-over-time tables).

    Per-user squares cannot be summed across days, so each day is one query over
    [start, end of day).
    """
    out: list[tuple[date, dict[str, VariantSums]]] = []
    for end in day_ends(first_day, last_day):
        sums = await fetch_variant_sums(pool, experiment, start=start, end=end)
        out.append(((end - timedelta(days=1)).date(), sums))
    return out


def is_finite_number(value: float | None) -> bool:
    """Not None, not NaN, not infinite."""
    return value is not None and math.isfinite(value)
