"""The serving study's variants: the former settings first, the current defaults among them."""

from __future__ import annotations

import dataclasses

from benchmarks.triton_serving_bench import targets, variants
from triton_models.ranker_repositories import ServingOptions


def test_the_former_settings_come_first_and_the_defaults_are_among_the_variants() -> None:
    chosen = variants(ServingOptions())

    before = chosen[0].options
    assert (before.preferred_batch_sizes, before.max_queue_delay_us) == ((500, 1000, 2000), 100)
    defaults = [v for v in chosen if v.options == ServingOptions()]
    assert len(defaults) == 1
    labels = [label for label, _ in targets(chosen)]
    assert labels[0] == chosen[0].name
    assert f"{chosen[0].name} (direct)" in labels
    assert len(set(labels)) == len(labels)
    for label, model in targets(chosen):
        assert model.endswith("_onnx") == label.endswith("(direct)")


def test_defaults_outside_the_grid_are_added() -> None:
    odd = dataclasses.replace(ServingOptions(), max_queue_delay_us=777)

    chosen = variants(odd)

    assert chosen[-1].name == "defaults"
    assert chosen[-1].options == odd
    assert chosen[-1].direct_too
