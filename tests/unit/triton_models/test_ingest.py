"""Cleaning rules and derived columns of the ingest step, on hand-made lines."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from triton_models.ingest import build_tables

COLUMNS = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]


def _raw(rows: Sequence[tuple[object, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"Quantity": "int64", "UnitPrice": "float64"})


ROWS = [
    (
        "536365",
        "85123A",
        "WHITE HANGING HEART T-LIGHT HOLDER ",
        6,
        "2011-01-03 08:26:00",
        2.55,
        "17850.0",
        "United Kingdom",
    ),
    (
        "536365",
        "85123A",
        "WHITE HANGING HEART T-LIGHT HOLDER ",
        6,
        "2011-01-03 08:26:00",
        2.55,
        "17850.0",
        "United Kingdom",
    ),  # duplicate
    ("A563185", "B", "Adjust bad debt", 1, "2011-01-04 10:00:00", 11062.06, None, "United Kingdom"),
    (
        "C536379",
        "85123A",
        "WHITE HANGING HEART T-LIGHT HOLDER",
        -1,
        "2011-01-05 09:41:00",
        2.55,
        "17850.0",
        "United Kingdom",
    ),  # cancellation
    ("536370", "POST", "POSTAGE", 3, "2011-01-05 10:00:00", 18.0, "12583.0", "France"),
    (
        "536371",
        "22633",
        "HAND WARMER UNION JACK",
        0,
        "2011-01-05 11:00:00",
        1.85,
        "12583.0",
        "France",
    ),  # non-positive
    (
        "536372",
        "22633",
        "HAND WARMER UNION JACK",
        80995,
        "2011-01-05 12:00:00",
        1.85,
        "16446.0",
        "United Kingdom",
    ),  # outlier
    (
        "536373",
        "22633",
        "HAND WARMER UNION JACK",
        12,
        "2011-03-01 12:00:00",
        1.85,
        None,
        "United Kingdom",
    ),  # anonymous
    (
        "536374",
        "84029G",
        "KNITTED UNION FLAG HOT WATER BOTTLE",
        8,
        "2011-03-02 09:00:00",
        3.39,
        "12583.0",
        "France",
    ),
]


def test_cleaning_rules_count_every_removed_row() -> None:
    tables = build_tables(_raw(ROWS))
    assert tables.cleaning == {
        "raw": 9,
        "duplicate": 1,
        "adjustment": 1,
        "cancellation": 1,
        "non_product": 1,
        "non_positive": 1,
        "outlier": 1,
        "missing_customer": 1,
        "events": 2,
    }
    assert tables.events["user_id"].tolist() == ["17850", "12583"]
    assert tables.events["revenue"].round(2).tolist() == [15.3, 27.12]
    assert len(tables.returns) == 1


def test_items_have_derived_category_and_availability() -> None:
    tables = build_tables(_raw(ROWS))
    items = tables.items.set_index("item_id")
    # Anonymous sales count for the catalogue; data_end is the day after the last sale.
    assert set(items.index) == {"85123A", "22633", "84029G"}
    assert items.loc["85123A", "title"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert not items.loc["85123A", "available"]  # unsold for more than 28 days
    assert items.loc["22633", "available"] and items.loc["84029G", "available"]
    assert items.loc["84029G", "popularity"] == 1
    assert items.loc["85123A", "category"] == "lighting"
    assert tables.split.data_end.isoformat() == "2011-03-03T00:00:00"
    assert tables.split.test_start < tables.split.data_end
