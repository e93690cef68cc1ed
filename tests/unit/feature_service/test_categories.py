"""The derived category rules: first matching rule wins, a fixed order of top categories."""

from __future__ import annotations

from feature_service.categories import OTHER, categorise, top_categories


def test_categories_first_rule_wins() -> None:
    assert categorise("CHRISTMAS TREE T-LIGHT HOLDER") == ("seasonal", "christmas")
    assert categorise("JUMBO BAG RED RETROSPOT") == ("bags", "bags")
    assert categorise("INFLATABLE POLITICAL GLOBE") == OTHER
    assert top_categories()[-1] == "other"
    assert len(set(top_categories())) == len(top_categories())
