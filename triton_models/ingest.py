"""Step 1 of the offline pipeline: raw UCI Online Retail lines to canonical Parquet tables.

Cleaning rules, applied in this order (each one's row count goes into the report):

1. ``duplicate``: exact duplicate lines (same invoice, item, quantity, time, price, customer)
   are kept once; they are double-scanned lines, not repeat purchases.
2. ``adjustment``: invoices starting with ``A`` are bad-debt adjustments, not sales.
3. ``cancellation``: invoices starting with ``C`` (negative quantity) are returns; they go to
   the ``returns`` table and never count as purchases.
4. ``non_product``: stock codes that are fees or services (postage, manual, bank charges,
   Amazon fees, discounts, samples, gift vouchers), not items one can recommend.
5. ``non_positive``: quantity <= 0 or unit price <= 0 on a non-cancelled line (write-offs,
   damaged stock, free samples).
6. ``outlier``: quantity above 5,000 or unit price above 1,000 GBP on one line (bulk
   mistakes that the shop itself cancelled or manual price corrections).
7. ``missing_customer``: lines without a customer number are anonymous: they count for the
   item catalogue (price, popularity, availability) but not as user events.

Derived columns, labelled as such: ``category``/``subcategory`` (title keyword rules, see
``feature_service.categories``) and ``available`` (the item sold within
``AVAILABILITY_WINDOW`` before the snapshot time; the data has no stock levels).

The data is split by time into train / validation / test periods of whole days; features of a
period only ever use events before it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from feature_service.categories import categorise

RAW_FILE = "online_retail.csv.gz"
NON_PRODUCT_CODES = frozenset(
    {"POST", "DOT", "M", "D", "S", "B", "C2", "CRUK", "PADS", "BANK CHARGES", "AMAZONFEE", "m"}
)
MAX_QUANTITY = 5_000
MAX_UNIT_PRICE = 1_000.0
AVAILABILITY_WINDOW = timedelta(days=28)
POPULARITY_WINDOW = timedelta(days=28)
TEST_DAYS = 28
VALIDATION_DAYS = 28
CURRENCY = "GBP"


@dataclass(frozen=True)
class TimeSplit:
    """Period boundaries (half-open: start inclusive, end exclusive)."""

    data_start: datetime
    validation_start: datetime
    test_start: datetime
    data_end: datetime


@dataclass(frozen=True)
class Tables:
    """The canonical tables: what every later step reads."""

    events: pd.DataFrame
    """One row per clean purchase line by a known customer."""
    returns: pd.DataFrame
    """Cancelled lines (returns), kept apart from purchases."""
    items: pd.DataFrame
    """The catalogue as of `split.data_end`, with derived category and availability."""
    users: pd.DataFrame
    """Customers with their country and activity totals."""
    split: TimeSplit
    """Train / validation / test boundaries."""
    cleaning: dict[str, int]
    """Rows removed (or set aside) by each cleaning rule, in rule order."""


def read_raw(data_dir: Path) -> pd.DataFrame:
    """Reads the raw CSV with every id as a string."""
    return pd.read_csv(
        data_dir / RAW_FILE,
        dtype={
            "InvoiceNo": str,
            "StockCode": str,
            "Description": str,
            "CustomerID": str,
            "Country": str,
            "Quantity": np.int64,
            "UnitPrice": np.float64,
        },
        keep_default_na=False,
        na_values={"CustomerID": [""], "Description": [""]},
    )


def build_tables(raw: pd.DataFrame) -> Tables:
    """Applies the cleaning rules and derives the canonical tables."""
    cleaning: dict[str, int] = {"raw": len(raw)}
    df = raw.rename(
        columns={
            "InvoiceNo": "invoice",
            "StockCode": "item_id",
            "Description": "title",
            "Quantity": "quantity",
            "InvoiceDate": "timestamp",
            "UnitPrice": "unit_price",
            "CustomerID": "user_id",
            "Country": "country",
        }
    )
    df["timestamp"] = pd.to_datetime(df["timestamp"], format="%Y-%m-%d %H:%M:%S")
    # Customer numbers come as float strings ("17850.0"); the API uses "17850".
    df["user_id"] = df["user_id"].str.replace(r"\.0$", "", regex=True)
    df["title"] = df["title"].str.strip()

    def drop(mask: pd.Series, rule: str) -> pd.DataFrame:
        cleaning[rule] = int(mask.sum())
        return df.loc[~mask]

    df = drop(df.duplicated(keep="first"), "duplicate")
    df = drop(df["invoice"].str.startswith("A"), "adjustment")
    cancelled = df["invoice"].str.startswith("C")
    returns = df.loc[cancelled].copy()
    df = drop(cancelled, "cancellation")
    code = df["item_id"].str.upper()
    df = drop(
        code.isin({c.upper() for c in NON_PRODUCT_CODES}) | code.str.startswith("GIFT_"),
        "non_product",
    )
    df = drop((df["quantity"] <= 0) | (df["unit_price"] <= 0), "non_positive")
    df = drop((df["quantity"] > MAX_QUANTITY) | (df["unit_price"] > MAX_UNIT_PRICE), "outlier")
    df = df.assign(revenue=df["quantity"] * df["unit_price"])
    anonymous = df["user_id"].isna()
    cleaning["missing_customer"] = int(anonymous.sum())
    events = df.loc[~anonymous].reset_index(drop=True)
    cleaning["events"] = len(events)

    data_end = (df["timestamp"].max().normalize() + pd.Timedelta(days=1)).to_pydatetime()
    split = TimeSplit(
        data_start=df["timestamp"].min().normalize().to_pydatetime(),
        validation_start=data_end - timedelta(days=TEST_DAYS + VALIDATION_DAYS),
        test_start=data_end - timedelta(days=TEST_DAYS),
        data_end=data_end,
    )
    items = build_items(df, as_of=data_end)
    users = build_users(events)
    events = events[
        [
            "invoice",
            "user_id",
            "item_id",
            "timestamp",
            "quantity",
            "unit_price",
            "revenue",
            "country",
        ]
    ]
    returns = returns[
        ["invoice", "user_id", "item_id", "timestamp", "quantity", "unit_price", "country"]
    ].reset_index(drop=True)
    return Tables(events, returns, items, users, split, cleaning)


def build_items(lines: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """The catalogue as of `as_of` from clean purchase lines (anonymous ones included).

    Title: the most frequent non-empty description. Price: median unit price over the item's
    last 90 days of sales. Popularity: distinct buyers (anonymous lines count per invoice)
    within `POPULARITY_WINDOW` before `as_of`.
    """
    lines = lines.loc[lines["timestamp"] < as_of]
    titled = lines.dropna(subset=["title"])
    title = (
        titled.groupby(["item_id", "title"])
        .size()
        .reset_index(name="n")
        .sort_values(["item_id", "n", "title"], ascending=[True, False, True])
        .drop_duplicates("item_id")
        .set_index("item_id")["title"]
    )
    last_sold = lines.groupby("item_id")["timestamp"].max()
    recent_price = lines.loc[
        lines["timestamp"] >= lines["item_id"].map(last_sold) - pd.Timedelta(days=90)
    ]
    price = recent_price.groupby("item_id")["unit_price"].median()
    window = lines.loc[lines["timestamp"] >= as_of - POPULARITY_WINDOW]
    buyer = window["user_id"].fillna("invoice:" + window["invoice"])
    popularity = buyer.groupby(window["item_id"]).nunique()
    items = pd.DataFrame({"title": title, "price": price, "last_sold": last_sold})
    items["title"] = items["title"].fillna("")
    items["popularity"] = popularity.reindex(items.index).fillna(0).astype(np.int64)
    paths = [categorise(t) for t in items["title"]]
    items["category"] = [p[0] for p in paths]
    items["subcategory"] = [p[1] for p in paths]
    items["available"] = items["last_sold"] >= as_of - AVAILABILITY_WINDOW
    items["price"] = items["price"].round(2)
    return items.rename_axis("item_id").reset_index().sort_values("item_id", ignore_index=True)


def build_users(events: pd.DataFrame) -> pd.DataFrame:
    """One row per customer: most frequent country, first/last purchase, orders and revenue."""
    grouped = events.groupby("user_id")
    users = pd.DataFrame(
        {
            "country": grouped["country"].agg(lambda s: s.value_counts().index[0]),
            "first_seen": grouped["timestamp"].min(),
            "last_seen": grouped["timestamp"].max(),
            "orders": grouped["invoice"].nunique(),
            "revenue": grouped["revenue"].sum().round(2),
        }
    )
    return users.rename_axis("user_id").reset_index()


def write_tables(tables: Tables, out_dir: Path) -> None:
    """Writes the tables as Parquet plus `ingest_report.json` with the cleaning counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("events", "returns", "items", "users"):
        getattr(tables, name).to_parquet(out_dir / f"{name}.parquet", index=False)
    report = {
        "cleaning_rows": tables.cleaning,
        "split": {k: v.isoformat() for k, v in asdict(tables.split).items()},
        "derived_columns": {
            "items.category": "derived from titles by keyword rules (feature_service.categories)",
            "items.subcategory": "derived from titles by keyword rules",
            "items.available": f"derived: sold within {AVAILABILITY_WINDOW.days} days of data_end",
        },
        "counts": {
            "items": len(tables.items),
            "available_items": int(tables.items["available"].sum()),
            "users": len(tables.users),
            "returns": len(tables.returns),
        },
    }
    (out_dir / "ingest_report.json").write_text(json.dumps(report, indent=2) + "\n")
