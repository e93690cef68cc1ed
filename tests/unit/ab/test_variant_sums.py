"""The backend differences of the one metric query (`ab.variant_sums.Dialect`) and the period
grid of the cumulative figures; the query itself runs on real SQLite and Postgres in
tests/integration/ab/test_recording_metrics.py."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from ab.__main__ import parse_period
from ab.variant_sums import MAX_PERIODS, POSTGRES, SQLITE, period_ends

T = datetime(2026, 3, 2, 8, 30, 15, 250_000, tzinfo=UTC)


def test_postgres_numbers_named_parameters_once_each_in_order_of_appearance() -> None:
    sql = "SELECT :b, x::text FROM t WHERE a = :a AND b = :b AND c IN (:c, :a)"
    text, args = POSTGRES.render(sql, {"a": 1, "b": "two", "c": 3.0, "unused": 4})
    assert text == "SELECT $1, x::text FROM t WHERE a = $2 AND b = $1 AND c IN ($3, $2)"
    assert args == ["two", 1, 3.0]


def test_sqlite_keeps_named_parameters() -> None:
    sql = "SELECT * FROM t WHERE a = :a"
    assert SQLITE.render(sql, {"a": 1}) == (sql, {"a": 1})


def test_times_bind_as_each_backend_stores_them() -> None:
    assert POSTGRES.bind_time(T) is T and POSTGRES.read_time(T) is T
    micros = SQLITE.bind_time(T)
    assert micros == int(T.timestamp() * 1_000_000)  # the gateways' own conversion
    assert SQLITE.read_time(1_772_440_215_250_000) == T


def test_day_periods_end_at_utc_midnights_after_the_last_time() -> None:
    ends = period_ends(T, T + timedelta(days=2), timedelta(days=1))
    assert ends == [datetime(2026, 3, d, tzinfo=UTC) for d in (3, 4, 5)]


def test_a_time_on_a_boundary_belongs_to_the_period_it_starts() -> None:
    start = datetime(2026, 3, 2, tzinfo=UTC)
    assert period_ends(start, start, timedelta(hours=6)) == [start + timedelta(hours=6)]
    second = T.replace(microsecond=0) + timedelta(seconds=1)
    assert period_ends(T, T, timedelta(seconds=1)) == [second]


def test_too_many_or_empty_periods_are_refused() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_PERIODS}"):
        period_ends(T, T + timedelta(days=2), timedelta(minutes=1))
    with pytest.raises(ValueError, match="positive"):
        period_ends(T, T, timedelta(0))


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("1d", timedelta(days=1)),
        ("6h", timedelta(hours=6)),
        ("10m", timedelta(minutes=10)),
        ("30s", timedelta(seconds=30)),
    ],  # fmt: skip
)
def test_period_option(text: str, period: timedelta) -> None:
    assert parse_period(text) == period


@pytest.mark.parametrize("text", ["", "0d", "1w", "1.5h", "-1d", "d"])
def test_bad_period_option_names_the_format(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="s, m, h or d"):
        parse_period(text)
