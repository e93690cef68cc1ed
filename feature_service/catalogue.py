"""The item catalogue as columnar NumPy arrays indexed by item position.

Item features change rarely, so each gateway process holds them as arrays and a request's item
features are a vectorised gather (`catalogue.price[candidate_positions]`), never per-item lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from feature_service.categories import top_categories

ITEMS_FILE = "items.parquet"
CURRENCY = "GBP"


class CatalogueError(Exception):
    """The catalogue file is missing or malformed."""


@dataclass(frozen=True, eq=False)
class ItemCatalogue:
    """All items; every array has one entry per item, in `item_ids` order."""

    item_ids: npt.NDArray[np.object_]
    titles: npt.NDArray[np.object_]
    price: npt.NDArray[np.float64]
    category: npt.NDArray[np.int16]
    """Top-level category as an index into `category_names` (derived from titles)."""
    subcategory: npt.NDArray[np.object_]
    available: npt.NDArray[np.bool_]
    """Derived availability (sold recently); the data has no stock levels."""
    popularity: npt.NDArray[np.float32]
    """Distinct recent buyers."""
    category_names: tuple[str, ...]
    position: dict[str, int]
    """item id -> position in the arrays."""

    def __len__(self) -> int:
        return len(self.item_ids)

    def positions(self, item_ids: list[str] | tuple[str, ...]) -> npt.NDArray[np.int32]:
        """Positions of the known ids among `item_ids`; unknown ids are skipped."""
        found = [self.position[i] for i in item_ids if i in self.position]
        return np.asarray(found, dtype=np.int32)

    @classmethod
    def load(cls, data_dir: Path) -> ItemCatalogue:
        """Loads `items.parquet` written by the offline pipeline (`make models`).

        Raises:
            CatalogueError: the file is missing or lacks a column.
        """
        path = data_dir / ITEMS_FILE
        if not path.is_file():
            raise CatalogueError(f"{path} not found: run `make models` first")
        table = pq.read_table(path)
        required = (
            "item_id",
            "title",
            "price",
            "category",
            "subcategory",
            "available",
            "popularity",
        )
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise CatalogueError(f"{path} lacks columns {missing}")
        names = top_categories()
        index = {name: i for i, name in enumerate(names)}
        categories = table.column("category").to_pylist()
        unknown = sorted(set(categories) - index.keys())
        if unknown:
            raise CatalogueError(f"{path} has categories not in the category tree: {unknown}")
        item_ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
        return cls(
            item_ids=item_ids,
            titles=np.asarray(table.column("title").to_pylist(), dtype=object),
            price=table.column("price").to_numpy().astype(np.float64),
            category=np.asarray([index[c] for c in categories], dtype=np.int16),
            subcategory=np.asarray(table.column("subcategory").to_pylist(), dtype=object),
            available=table.column("available").to_numpy().astype(bool),
            popularity=table.column("popularity").to_numpy().astype(np.float32),
            category_names=names,
            position={item_id: i for i, item_id in enumerate(item_ids)},
        )
