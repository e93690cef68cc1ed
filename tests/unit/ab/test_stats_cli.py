"""``python -m ab stats``: JSON in, JSON out, one error line for bad input.

The end-to-end cases run the real command in a subprocess; the many malformed-input cases
call the same ``run`` function in-process to stay fast.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ab.stats_cli import EXIT_INPUT_ERROR, run

REPO_ROOT = Path(__file__).resolve().parents[3]

MEAN_CONTROL = {"n": 3407, "sum": 1396.87, "sum_squares": 52377.9767}
MEAN_TREATMENT = {"n": 3461, "sum": 2422.7, "sum_squares": 134698.29}


def run_command(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ab", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def run_stats(request: Any) -> tuple[int, str, str]:
    """In-process ``run`` on a request (a JSON string, or an object to serialise)."""
    text = request if isinstance(request, str) else json.dumps(request)
    out, err = io.StringIO(), io.StringIO()
    code = run(io.StringIO(text), out, err)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- subprocess, end to end


def test_mean_test_with_defaults() -> None:
    request = {"metric": "mean", "control": MEAN_CONTROL, "treatment": MEAN_TREATMENT}
    proc = run_command(json.dumps(request), "stats")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.count("\n") == 1
    result = json.loads(proc.stdout)
    # gbstats TestTwoSidedTTest.test_two_sided_ttest
    assert round(result["effect"], 5) == 0.70732
    assert [round(x, 5) for x in result["ci"]] == [-0.03526, 1.44989]
    assert round(result["std_error"], 5) == 0.37879
    assert round(result["p_value"], 5) == 0.06191
    # Two-sided p 0.06191: one-sided 0.03096, so P(higher) = 0.96904.
    assert round(result["chance_to_win"], 4) == round(1 - 0.06191 / 2, 4)
    assert result["difference"] == "relative"
    assert result["alternative"] == "two-sided"
    assert result["method"] == "fixed"
    assert result["alpha"] == 0.05
    assert result["cuped"] is False
    assert result["control_mean"] == pytest.approx(0.41)
    assert result["treatment_mean"] == pytest.approx(0.7)
    assert result["df"] > 5000


def test_sequential_one_sided_writes_infinity_as_string() -> None:
    request = {
        "metric": "mean",
        "alternative": "greater",
        "method": "sequential",
        "difference": "absolute",
        "control": {"n": 3000, "sum": 1396.87, "sum_squares": 52377.9767},
        "treatment": MEAN_TREATMENT,
    }
    proc = run_command(json.dumps(request), "stats")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert round(result["ci"][0], 5) == -0.12657  # gbstats: -0.12656844172804982
    assert result["ci"][1] == "inf"
    assert result["df"] is None
    assert result["sequential_tuning"] == 5000


def test_srm_request() -> None:
    proc = run_command(json.dumps({"srm": {"observed": [1000, 1200], "weights": [1, 1]}}), "stats")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert round(result["p_value"], 9) == 0.000020079  # gbstats check_srm
    assert round(result["statistic"], 5) == 18.18182
    assert result["expected"] == [1100.0, 1100.0]


def test_sample_size_request() -> None:
    request = {"sample_size": {"metric": "proportion", "baseline": 0.03, "mde": 0.05}}
    proc = run_command(json.dumps(request), "stats")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["users_per_variant"] == 207_935
    assert result["total_users"] == 415_870


def test_missing_field_exits_nonzero_with_one_line() -> None:
    request = {
        "metric": "mean",
        "control": {"n": 3407, "sum": 1396.87},
        "treatment": MEAN_TREATMENT,
    }
    proc = run_command(json.dumps(request), "stats")
    assert proc.returncode == EXIT_INPUT_ERROR
    assert proc.stdout == ""
    assert proc.stderr == "error: control.sum_squares: required\n"


def test_bad_json_exits_nonzero_with_one_line() -> None:
    proc = run_command("{not json", "stats")
    assert proc.returncode == EXIT_INPUT_ERROR
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("error: input: invalid JSON")


def test_unknown_subcommand_is_a_usage_error() -> None:
    proc = run_command("", "frobnicate")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


# ---------------------------------------------------------------- in-process


def test_proportion_matches_gbstats() -> None:
    code, out, _ = run_stats(
        {"metric": "proportion", "control": {"n": 28, "sum": 14}, "treatment": {"n": 30, "sum": 16}}
    )
    assert code == 0
    result = json.loads(out)
    assert [round(x, 5) for x in result["ci"]] == [-0.47767, 0.61101]
    assert round(result["p_value"], 5) == 0.80707


def test_ratio_metric() -> None:
    arm = {
        "n": 1000,
        "numerator": {"sum": 500.0, "sum_squares": 900.0},
        "denominator": {"sum": 10_000.0, "sum_squares": 130_000.0},
        "sum_products": 6_000.0,
    }
    treated = {**arm, "numerator": {"sum": 550.0, "sum_squares": 980.0}, "sum_products": 6_500.0}
    code, out, err = run_stats({"metric": "ratio", "control": arm, "treatment": treated})
    assert code == 0, err
    result = json.loads(out)
    assert result["control_mean"] == pytest.approx(0.05)
    assert result["effect"] == pytest.approx(0.1)


def test_cuped_mean_matches_gbstats_sequential_vector() -> None:
    control = {
        "n": 3000,
        "sum": 1396.87,
        "sum_squares": 52377.9767,
        "pre": {"sum": 16.87, "sum_squares": 527.9767},
        "sum_products_pre": 1,
    }
    treatment = {
        **MEAN_TREATMENT,
        "pre": {"sum": 22.7, "sum_squares": 1348.29},
        "sum_products_pre": 1,
    }
    code, out, err = run_stats(
        {"metric": "mean", "method": "sequential", "control": control, "treatment": treatment}
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["cuped"] is True
    assert round(result["effect"], 5) == 0.50338
    assert [round(x, 5) for x in result["ci"]] == [-0.50969, 1.51646]


@pytest.mark.parametrize(
    "pre",
    [
        {"sum": 120.0},  # 0/1 covariate, sum_squares left out
        {"sum": 120.0, "sum_squares": 120.0},  # 0/1 covariate
        {"sum": 120.0, "sum_squares": 400.0},  # e.g. pre-period sessions: a mean covariate
    ],
)
def test_cuped_proportion_accepts_binary_or_mean_covariate(pre: dict[str, float]) -> None:
    control = {"n": 1000, "sum": 100, "pre": pre, "sum_products_pre": 60.0}
    treatment = {"n": 1000, "sum": 115, "pre": pre, "sum_products_pre": 70.0}
    code, out, err = run_stats({"metric": "proportion", "control": control, "treatment": treatment})
    assert code == 0, err
    result = json.loads(out)
    assert result["cuped"] is True
    assert result["control_mean"] == 0.1


def test_mean_sample_size() -> None:
    code, out, _ = run_stats(
        {
            "sample_size": {
                "metric": "mean",
                "baseline_mean": 10.0,
                "baseline_std": 20.0,
                "mde": 0.05,
            }
        }
    )
    assert code == 0
    assert json.loads(out)["users_per_variant"] == 25_117


def _test(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "metric": "mean",
        "control": dict(MEAN_CONTROL),
        "treatment": dict(MEAN_TREATMENT),
    }
    request.update(changes)
    return request


CUPED_ARM = {**MEAN_CONTROL, "pre": {"sum": 10.0, "sum_squares": 500.0}, "sum_products_pre": 5}


@pytest.mark.parametrize(
    ("request_", "line"),
    [
        ("", "error: input: invalid JSON: Expecting value at line 1"),
        ("[1, 2]", "error: input: must be a JSON object"),
        ('{"metric": "mean", "alpha": NaN}', "error: input: NaN is not valid JSON"),
        ({"control": MEAN_CONTROL, "treatment": MEAN_TREATMENT}, "error: metric: required"),
        (_test(metric="median"), "error: metric: must be 'mean', 'proportion' or 'ratio'"),
        (_test(colour="red"), "error: colour: unknown key"),
        (_test(alpha="0.05"), "error: alpha: must be a valid number"),
        (_test(alpha=1.5), "error: alpha: must lie strictly between 0 and 1"),
        (_test(difference="ratio"), "error: difference: must be 'relative' or 'absolute'"),
        (_test(method="bayesian"), "error: method: must be 'fixed' or 'sequential'"),
        (
            _test(method="sequential", sequential_tuning=0),
            "error: sequential_tuning: must be a positive number",
        ),
        (_test(treatment=None), "error: treatment: must be a valid dictionary"),
        (
            _test(control={**MEAN_CONTROL, "n": 1}),
            "error: control.n: must be at least 2",
        ),
        (
            _test(control={**MEAN_CONTROL, "n": 3407.0}),
            "error: control.n: must be a valid integer",
        ),
        (
            _test(control={**MEAN_CONTROL, "n": True}),
            "error: control.n: must be a valid integer",
        ),
        (
            _test(treatment={**MEAN_TREATMENT, "sum_squares": 1.0}),
            "error: treatment.sum_squares: implies a negative variance (sum_squares < sum**2 / n)",
        ),
        (
            _test(treatment={**MEAN_TREATMENT, "extra": 1}),
            "error: treatment.extra: unknown key",
        ),
        (
            _test(metric="proportion", control={"n": 10, "sum": 11}, treatment={"n": 10, "sum": 1}),
            "error: control.sum: must lie between 0 and n",
        ),
        (
            _test(metric="proportion", control={"n": 10, "sum": 0}, treatment={"n": 10, "sum": 1}),
            "error: control: has zero variance; the test is undefined",
        ),
        (
            _test(metric="ratio"),
            "error: control.numerator: required",
        ),
        (
            _test(control=CUPED_ARM),
            "error: treatment.pre: required because the other arm has pre",
        ),
        (
            _test(control={**MEAN_CONTROL, "pre": {"sum": 1.0, "sum_squares": 5.0}}),
            "error: control.sum_products_pre: required when pre is given",
        ),
        (
            _test(control={**MEAN_CONTROL, "pre": {"sum": 1.0}, "sum_products_pre": 1.0}),
            "error: control.pre.sum_squares: required",
        ),
        (
            _test(control={**CUPED_ARM, "pre": {"sum": 10.0, "sum_squares": 0.0}}),
            "error: control.pre.sum_squares: implies a negative variance "
            "(sum_squares < sum**2 / n)",
        ),
        (
            {"srm": {"observed": [10, 20], "weights": [1]}},
            "error: srm.weights: " "must have one entry per arm in observed",
        ),
        ({"srm": {"observed": [10, 20]}, "metric": "mean"}, "error: metric: unknown key"),
        ({"srm": {"observed": [10, "a"]}}, "error: srm.observed.1: must be a valid integer"),
        (
            {"sample_size": {"metric": "proportion", "mde": 0.05}},
            "error: sample_size.baseline: " "required",
        ),
        (
            {"sample_size": {"metric": "proportion", "baseline": 0.03, "mde": 0.05, "power": 2}},
            "error: sample_size.power: must lie strictly between 0 and 1",
        ),
        (
            {"sample_size": {"metric": "count"}},
            "error: sample_size.metric: must be 'proportion' " "or 'mean'",
        ),
    ],
)
def test_malformed_input_gives_one_error_line(request_: Any, line: str) -> None:
    code, out, err = run_stats(request_)
    assert code == EXIT_INPUT_ERROR
    assert out == ""
    assert err == line + "\n"
