"""Experiment metrics at the user level (the randomisation unit), one implementation for both
feature store backends.

Population: the users with at least one exposure of the experiment in the window; a user
belongs to each variant they were exposed to (normally exactly one).

Attribution of an outcome event (`events` table of the feature service) to a variant:

1. the variant of the exposure with the same `request_id`, when there is one;
2. otherwise the user's assignment, `ab.assignment.assign` with the configured experiment
   (computed here in Python and handed to the query as the temporary table `ab_assigned`).

An event counts for a (user, variant) pair when it is attributed to that variant, happened at
or after the user's first exposure to it and before the window's end. Events attributed to a
variant the user was never exposed to (or to no variant: outside the coverage) are dropped.

Per user: impressions (type 1), clicks (type 2), purchases (type 5 events), revenue (sum of
purchase revenue) and orders (distinct purchase timestamps: the lines of one checkout share
its timestamp). Discovery, from what the gateway recorded when serving (an item is *new* to
the user when it is in the exposure's `new_item_ids`: not among the purchases the gateway knew
for them): recommended items (the lengths of the user's exposures' item lists in the window),
new recommended items, and new clicks / new purchases: clicks and purchases whose `request_id`
names an exposure of this experiment that listed the item as new (an event without such an
exposure, attributed by assignment, is never counted as new: both arms alike). Per variant,
the sufficient statistics of the engine in `ab.statistics`:

========================= ============ =============================================
metric                    kind         per-user numerator / denominator
========================= ============ =============================================
ctr                       RatioStats   clicks / impressions
conversion_rate           RatioStats   purchases / clicks
revenue_per_user          MeanStats    revenue (zeros included, n = exposed users)
average_order_value       RatioStats   revenue / orders
discovery_share           RatioStats   new recommended items / recommended items
discovery_click_share     RatioStats   new clicks / clicks
discovery_purchase_share  RatioStats   new purchases / purchases
========================= ============ =============================================

The SQL is written once, in what Postgres and SQLite share (CTEs, CASE, COALESCE, CAST AS
DOUBLE PRECISION, named parameters), and runs on a `MetricsConnection`; `ab.backends` has one
on Postgres (production) and one on the embedded profile's SQLite files. `Dialect` holds the
only differences: the time column (`ts` timestamptz or `ts_us` integer microseconds), how a
time is bound, how an item list is measured and searched (`text[]` or space-separated text),
and the parameter style. Every read happens in one transaction (one snapshot
for the exposed users, their assignments and the sums) that is rolled back at the end, which
also drops `ab_assigned`. All values travel as query parameters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, get_args

from ab.assignment import assign
from ab.config import ExperimentConfig, MetricName
from ab.statistics import MeanStats, Moments, RatioStats, StatisticsError

METRICS: tuple[MetricName, ...] = get_args(MetricName)
__all__ = ["METRICS", "MetricName"]

IMPRESSION, CLICK, PURCHASE = 1, 2, 5

MAX_PERIODS = 1000
"""Most cumulative points one read returns (each is one aggregate query)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([a-z_]+)")


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends' SQL."""

    name: Literal["postgres", "sqlite"]
    time_column: str
    """Column of exposure and event times in both tables."""
    microseconds: bool
    """Times are stored as integer microseconds since the epoch (else timestamptz)."""

    def bind_time(self, moment: datetime) -> Any:
        """A timezone-aware time as this backend compares it (the writers' own conversion, so
        a bound equal to a stored time compares equal)."""
        return int(moment.timestamp() * 1_000_000) if self.microseconds else moment

    def read_time(self, value: Any) -> datetime:
        """A stored time as a timezone-aware datetime."""
        if self.microseconds:
            return _EPOCH + timedelta(microseconds=int(value))
        moment: datetime = value
        return moment

    def list_length(self, column: str) -> str:
        """SQL for the number of items in an item-list column."""
        if self.name == "postgres":
            return f"cardinality({column})"
        spaces = f"LENGTH({column}) - LENGTH(REPLACE({column}, ' ', ''))"
        return f"(CASE WHEN {column} = '' THEN 0 ELSE {spaces} + 1 END)"

    def list_contains(self, column: str, item: str) -> str:
        """SQL that is true when the item-list column holds `item` (an expression)."""
        if self.name == "postgres":
            return f"{item} = ANY({column})"
        return f"INSTR(' ' || {column} || ' ', ' ' || {item} || ' ') > 0"

    def render(self, sql: str, values: Mapping[str, Any]) -> tuple[str, Any]:
        """The statement and its arguments in the driver's style: `$n` and a list for asyncpg,
        `:name` and the mapping for sqlite3."""
        if self.name == "sqlite":
            return sql, dict(values)
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in order:
                order.append(match.group(1))
            return f"${order.index(match.group(1)) + 1}"

        text = _NAMED_PARAMETER.sub(number, sql)
        return text, [values[name] for name in order]


POSTGRES = Dialect("postgres", "ts", microseconds=False)
SQLITE = Dialect("sqlite", "ts_us", microseconds=True)


class MetricsConnection(Protocol):
    """One connection inside a read transaction (see `MetricsDatabase.snapshot`)."""

    @property
    def dialect(self) -> Dialect:
        """The backend's SQL differences."""
        ...

    async def fetch(self, sql: str, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of a query written with `:name` parameters."""
        ...

    async def execute(self, sql: str) -> None:
        """A statement without parameters."""
        ...

    async def insert_assignments(self, rows: Sequence[tuple[str, str]]) -> None:
        """(user id, variant) rows into the temporary table `ab_assigned`."""
        ...


class MetricsDatabase(Protocol):
    """Where exposures and events live."""

    def snapshot(self) -> AbstractAsyncContextManager[MetricsConnection]:
        """A connection in one read transaction, rolled back on exit."""
        ...


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
    recommended: float = 0.0
    recommended_sq: float = 0.0
    recommended_new: float = 0.0
    recommended_new_sq: float = 0.0
    recommended_new_x_recommended: float = 0.0
    clicks_new: float = 0.0
    clicks_new_sq: float = 0.0
    clicks_new_x_clicks: float = 0.0
    purchases_new: float = 0.0
    purchases_new_sq: float = 0.0
    purchases_new_x_purchases: float = 0.0

    def stats(self, metric: MetricName) -> MeanStats | RatioStats | None:
        """The metric's sufficient statistics, None while undefined (fewer than 2 users, a
        zero denominator)."""
        try:
            if metric == "revenue_per_user":
                return MeanStats(self.users, self.revenue, self.revenue_sq)
            num, num_sq, den, den_sq, prod = self._ratio(metric)
            return RatioStats(self.users, Moments(num, num_sq), Moments(den, den_sq), prod)
        except StatisticsError:
            return None

    def _ratio(self, metric: MetricName) -> tuple[float, float, float, float, float]:
        """Numerator, its squares, denominator, its squares, their products of a ratio metric."""
        return {
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
            "discovery_share": (
                self.recommended_new,
                self.recommended_new_sq,
                self.recommended,
                self.recommended_sq,
                self.recommended_new_x_recommended,
            ),
            "discovery_click_share": (
                self.clicks_new,
                self.clicks_new_sq,
                self.clicks,
                self.clicks_sq,
                self.clicks_new_x_clicks,
            ),
            "discovery_purchase_share": (
                self.purchases_new,
                self.purchases_new_sq,
                self.purchases,
                self.purchases_sq,
                self.purchases_new_x_purchases,
            ),
        }[metric]

    def value(self, metric: MetricName) -> float | None:
        """The metric's point value (ratio of sums, or mean), None while undefined."""
        if metric == "revenue_per_user":
            return self.revenue / self.users if self.users else None
        num, _, den, _, _ = self._ratio(metric)
        return num / den if den else None

    def as_dict(self) -> dict[str, Any]:
        """The sums as a JSON-ready mapping (audit evidence, reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_EXPOSED_USERS = """
SELECT DISTINCT user_id FROM exposures
WHERE experiment = :experiment {start}
"""

_SPAN = """
SELECT MIN({ts}), MAX({ts}) FROM exposures WHERE experiment = :experiment
"""

_CREATE_ASSIGNED = "CREATE TEMPORARY TABLE ab_assigned (user_id TEXT PRIMARY KEY, variant TEXT)"

_VARIANT_SUMS = """
WITH exposed AS (
    SELECT variant, user_id, MIN({ts}) AS first_ts,
           SUM({item_count}) AS recommended, SUM({new_item_count}) AS recommended_new
    FROM exposures
    WHERE experiment = :experiment {start} {end}
    GROUP BY variant, user_id
),
attributed AS (
    SELECT u.variant, u.user_id, e.type, e.revenue, e.{ts} AS ts,
           CASE WHEN x.request_id IS NOT NULL AND {listed_new} THEN 1 ELSE 0 END AS is_new
    FROM exposed u
    JOIN events e
      ON e.user_id = u.user_id
     AND e.type IN (:impression, :click, :purchase)
     AND e.{ts} >= u.first_ts {event_end}
    LEFT JOIN exposures x ON x.request_id = e.request_id AND x.experiment = :experiment
    LEFT JOIN ab_assigned a ON a.user_id = e.user_id
    WHERE COALESCE(x.variant, a.variant) = u.variant
),
counted AS (
    SELECT variant, user_id,
           SUM(CASE WHEN type = :impression THEN 1 ELSE 0 END) AS impressions,
           SUM(CASE WHEN type = :click THEN 1 ELSE 0 END) AS clicks,
           SUM(CASE WHEN type = :purchase THEN 1 ELSE 0 END) AS purchases,
           SUM(CASE WHEN type = :purchase THEN revenue ELSE 0 END) AS revenue,
           COUNT(DISTINCT CASE WHEN type = :purchase THEN ts END) AS orders,
           SUM(CASE WHEN type = :click THEN is_new ELSE 0 END) AS clicks_new,
           SUM(CASE WHEN type = :purchase THEN is_new ELSE 0 END) AS purchases_new
    FROM attributed
    GROUP BY variant, user_id
),
per_user AS (
    -- every exposed user, with zeros where nothing was attributed
    SELECT u.variant,
           CAST(COALESCE(c.impressions, 0) AS DOUBLE PRECISION) AS impressions,
           CAST(COALESCE(c.clicks, 0) AS DOUBLE PRECISION) AS clicks,
           CAST(COALESCE(c.purchases, 0) AS DOUBLE PRECISION) AS purchases,
           CAST(COALESCE(c.revenue, 0) AS DOUBLE PRECISION) AS revenue,
           CAST(COALESCE(c.orders, 0) AS DOUBLE PRECISION) AS orders,
           CAST(u.recommended AS DOUBLE PRECISION) AS recommended,
           CAST(u.recommended_new AS DOUBLE PRECISION) AS recommended_new,
           CAST(COALESCE(c.clicks_new, 0) AS DOUBLE PRECISION) AS clicks_new,
           CAST(COALESCE(c.purchases_new, 0) AS DOUBLE PRECISION) AS purchases_new
    FROM exposed u
    LEFT JOIN counted c ON c.variant = u.variant AND c.user_id = u.user_id
)
SELECT variant,
       COUNT(*),
       SUM(impressions), SUM(impressions * impressions),
       SUM(clicks), SUM(clicks * clicks), SUM(clicks * impressions),
       SUM(purchases), SUM(purchases * purchases), SUM(purchases * clicks),
       SUM(revenue), SUM(revenue * revenue),
       SUM(orders), SUM(orders * orders), SUM(revenue * orders),
       SUM(recommended), SUM(recommended * recommended),
       SUM(recommended_new), SUM(recommended_new * recommended_new),
       SUM(recommended_new * recommended),
       SUM(clicks_new), SUM(clicks_new * clicks_new), SUM(clicks_new * clicks),
       SUM(purchases_new), SUM(purchases_new * purchases_new), SUM(purchases_new * purchases)
FROM per_user
GROUP BY variant
ORDER BY variant
"""


def _float(value: Any) -> float:
    return 0.0 if value is None else float(value)


def assignments(experiment: ExperimentConfig, user_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(user id, variant) of the users `ab.assignment.assign` places in an arm."""
    out: list[tuple[str, str]] = []
    for user_id in user_ids:
        found = assign(experiment, user_id)
        if found is not None:
            out.append((user_id, found.variant))
    return out


def _variant_sums(row: tuple[Any, ...]) -> VariantSums:
    variant, users, *sums = row
    names = [f.name for f in fields(VariantSums)[2:]]
    return VariantSums(
        variant=str(variant),
        users=int(users),
        **{name: _float(value) for name, value in zip(names, sums, strict=True)},
    )


class ExperimentMetrics:
    """The metric reads of the controller and the report, on either backend's database.

    Satisfies the controller's `SumsSource` (`variant_sums`).
    """

    def __init__(self, database: MetricsDatabase) -> None:
        self._database = database

    async def variant_sums(self, experiment: ExperimentConfig) -> dict[str, VariantSums]:
        """Sums per variant since the experiment's configured start."""
        return await self.sums(experiment, start=experiment.start)

    async def sums(
        self,
        experiment: ExperimentConfig,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> dict[str, VariantSums]:
        """Per-variant user-level sums of `experiment` for exposures in [start, end)."""
        [out] = await self.cumulative(experiment, start=start, ends=[end])
        return out

    async def cumulative(
        self,
        experiment: ExperimentConfig,
        *,
        start: datetime | None,
        ends: Sequence[datetime | None],
    ) -> list[dict[str, VariantSums]]:
        """Per-variant sums over [start, end) for each of `ends` (None: no end), read in one
        snapshot. Per-user squares cannot be added up across periods, so each end is one
        aggregate query; the assignments are computed once.

        Users are assigned with the configured experiment (not with routing overrides),
        forced enabled, so attribution does not change when an experiment is stopped.
        """
        config = experiment.model_copy(update={"enabled": True})
        async with self._database.snapshot() as connection:
            dialect = connection.dialect
            ts = dialect.time_column
            values: dict[str, Any] = {
                "experiment": experiment.name,
                "impression": IMPRESSION,
                "click": CLICK,
                "purchase": PURCHASE,
            }
            start_clause = ""
            if start is not None:
                start_clause = f"AND {ts} >= :start"
                values["start"] = dialect.bind_time(start)
            rows = await connection.fetch(
                _EXPOSED_USERS.format(start=start_clause),
                {k: values[k] for k in ("experiment", "start") if k in values},
            )
            await connection.execute(_CREATE_ASSIGNED)
            await connection.insert_assignments(assignments(config, [str(r[0]) for r in rows]))
            out: list[dict[str, VariantSums]] = []
            for end in ends:
                end_clause = event_end = ""
                window = dict(values)
                if end is not None:
                    end_clause = f"AND {ts} < :end"
                    event_end = f"AND e.{ts} < :end"
                    window["end"] = dialect.bind_time(end)
                sql = _VARIANT_SUMS.format(
                    ts=ts,
                    start=start_clause,
                    end=end_clause,
                    event_end=event_end,
                    item_count=dialect.list_length("item_ids"),
                    new_item_count=dialect.list_length("new_item_ids"),
                    listed_new=dialect.list_contains("x.new_item_ids", "e.item_id"),
                )
                sums = [_variant_sums(row) for row in await connection.fetch(sql, window)]
                out.append({s.variant: s for s in sums})
        return out

    async def exposure_span(self, experiment: ExperimentConfig) -> tuple[datetime, datetime] | None:
        """Times of the experiment's first and last exposure; None before any."""
        async with self._database.snapshot() as connection:
            dialect = connection.dialect
            [(first, last)] = await connection.fetch(
                _SPAN.format(ts=dialect.time_column), {"experiment": experiment.name}
            )
        if first is None or last is None:
            return None
        return dialect.read_time(first), dialect.read_time(last)


def period_ends(first: datetime, last: datetime, period: timedelta) -> list[datetime]:
    """The ends of the periods covering [first, last]: multiples of `period` since the Unix
    epoch (UTC midnights for a day), the last one after `last`.

    Raises:
        ValueError: `period` is not positive, or more than `MAX_PERIODS` of them are needed.
    """
    if period <= timedelta(0):
        raise ValueError(f"period must be positive, got {period}")
    count = (last - _EPOCH) // period - (first - _EPOCH) // period + 1
    if count > MAX_PERIODS:
        raise ValueError(
            f"{count} periods of {period} from {first.isoformat()} to {last.isoformat()}; "
            f"at most {MAX_PERIODS}: choose a longer period"
        )
    first_end = _EPOCH + ((first - _EPOCH) // period + 1) * period
    return [first_end + i * period for i in range(count)]


def is_finite_number(value: float | None) -> bool:
    """Not None, not NaN, not infinite."""
    return value is not None and math.isfinite(value)
