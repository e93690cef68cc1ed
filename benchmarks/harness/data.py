"""Request data for ghz: Recommend requests of real users of the data set.

User ids and countries come from `build/data/users.parquet` (written by `make models`); the
country names of the data set become ISO 3166-1 alpha-2 codes where we know them (the others,
such as "Unspecified" or "European Community", are sent without a country, as a client that
does not know it would). Device and page are drawn at random with a fixed seed, so a rerun
sends the same sequence.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# The data set's country names -> ISO 3166-1 alpha-2. Covers the countries with most users;
# the rest go without a country.
COUNTRY_CODES: Mapping[str, str] = {
    "United Kingdom": "GB",
    "Germany": "DE",
    "France": "FR",
    "Spain": "ES",
    "Belgium": "BE",
    "Switzerland": "CH",
    "Portugal": "PT",
    "Italy": "IT",
    "Finland": "FI",
    "Norway": "NO",
    "Netherlands": "NL",
    "Australia": "AU",
    "Austria": "AT",
    "Sweden": "SE",
    "Denmark": "DK",
    "Japan": "JP",
    "Poland": "PL",
    "Cyprus": "CY",
    "Israel": "IL",
    "Greece": "GR",
    "Canada": "CA",
    "USA": "US",
    "Iceland": "IS",
    "Ireland": "IE",
    "EIRE": "IE",
    "Channel Islands": "JE",
    "Singapore": "SG",
    "Brazil": "BR",
    "Lithuania": "LT",
    "Malta": "MT",
    "Czech Republic": "CZ",
    "Bahrain": "BH",
    "United Arab Emirates": "AE",
    "Lebanon": "LB",
    "Saudi Arabia": "SA",
    "RSA": "ZA",
}
DEVICES = ("DEVICE_DESKTOP", "DEVICE_MOBILE", "DEVICE_TABLET", "DEVICE_APP")
PAGES = ("PAGE_HOME", "PAGE_PRODUCT", "PAGE_CATEGORY", "PAGE_SEARCH", "PAGE_CART")
DEFAULT_USERS = Path("build/data/users.parquet")


def country_code(name: str | None) -> str | None:
    """ISO code of a data-set country name, None when unknown."""
    if name is None:
        return None
    return COUNTRY_CODES.get(name.strip())


def build_requests(
    users: Iterable[tuple[str, str | None]],
    *,
    count: int,
    num_items: int = 10,
    seed: int = 20261126,
    sample: bool = True,
) -> list[dict[str, Any]]:
    """`count` Recommend requests (ghz's protobuf JSON form) for users drawn with replacement.

    Args:
        users: `(user_id, country name)` pairs.
        count: how many requests the array holds (ghz cycles through them).
        num_items: `num_items` of every request.
        seed: random seed of the draws.
        sample: False sends the first `count` users in their given order (the caller drew
            them), one request each.
    """
    pool: Sequence[tuple[str, str | None]] = list(users)
    if not pool:
        raise ValueError("no users to draw requests from")
    if not sample and count > len(pool):
        raise ValueError(f"{count} requests asked of {len(pool)} users")
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        user_id, country = pool[rng.randrange(len(pool)) if sample else i]
        context: dict[str, Any] = {"device": rng.choice(DEVICES), "page": rng.choice(PAGES)}
        code = country_code(country)
        if code is not None:
            context["country"] = code
        requests.append({"user_id": str(user_id), "num_items": num_items, "context": context})
    return requests


def load_users(path: Path = DEFAULT_USERS) -> list[tuple[str, str | None]]:
    """`(user_id, country)` of every user in the canonical users table.

    Raises:
        FileNotFoundError: the table is missing (run `make models`).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `make models` first")
    import pyarrow.parquet as pq  # here: the tests of the pure functions need no pyarrow

    table = pq.read_table(path, columns=["user_id", "country"])
    ids = table.column("user_id").to_pylist()
    countries = table.column("country").to_pylist()
    return [(str(u), c) for u, c in zip(ids, countries, strict=True)]


def write_data_file(path: Path, requests: Sequence[Mapping[str, Any]]) -> Path:
    """Write the JSON array ghz reads with `--data-file` (round-robin over its elements)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(requests), separators=(",", ":")), encoding="utf-8")
    return path
