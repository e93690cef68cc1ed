"""The pipeline CLI: steps are skipped when their inputs are unchanged."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from triton_models.cli import batch_sizes, build_options, run_step
from triton_models.pipeline import PipelineOptions
from triton_models.ranker_repositories import ServingOptions


def test_step_runs_once_per_input_hash(tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("one")
    out = tmp_path / "out"
    calls: list[int] = []

    def build() -> None:
        calls.append(1)
        (out / "result").write_text("built")

    assert run_step("demo", out, [source], "params", build)
    assert not run_step("demo", out, [source], "params", build)
    assert run_step("demo", out, [source], "other params", build)
    source.write_text("two")
    assert run_step("demo", out, [source], "other params", build)
    assert run_step("demo", out, [source], "other params", build, force=True)
    assert len(calls) == 4


def test_failed_step_is_not_marked_current(tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("x")
    out = tmp_path / "out"

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_step("demo", out, [source], "", fail)
    assert run_step("demo", out, [source], "", lambda: None)


def test_options_from_arguments() -> None:
    args = argparse.Namespace(
        sample=300,
        no_progress=True,
        max_epochs=3,
        preferred_batch_sizes=(64, 128),
        max_queue_delay_us=10,
        instances=1,
    )
    opts = build_options(args)
    assert opts.sample == 300 and opts.train.max_epochs == 3 and not opts.train.progress
    assert opts.serving.preferred_batch_sizes == (64, 128)
    assert opts.serving.max_queue_delay_us == 10 and opts.serving.instance_count == 1
    # Progress bars do not change outputs, so they do not change the hash.
    assert '"progress"' not in opts.as_json()


def test_serving_options_change_only_the_triton_steps_hash() -> None:
    base = PipelineOptions()
    tuned = dataclasses.replace(base, serving=ServingOptions(max_queue_delay_us=5_000))
    assert tuned.as_json() != base.as_json()
    assert tuned.as_json(without=("serving",)) == base.as_json(without=("serving",))
    assert '"serving"' not in base.as_json(without=("serving",))


def test_preferred_batch_sizes_argument() -> None:
    assert batch_sizes("600,1200") == (600, 1200)
    assert batch_sizes("none") == batch_sizes("") == ()
    for bad in ("600,x", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            batch_sizes(bad)
