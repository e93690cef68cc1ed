"""``python -m ab stats``: one JSON request on stdin, one JSON result on stdout.

Three request forms, told apart by their top-level key:

* a two-arm test::

      {"metric": "mean" | "proportion" | "ratio",
       "difference": "relative" | "absolute",          (default "relative")
       "alternative": "two-sided" | "greater" | "less", (default "two-sided")
       "alpha": 0.05,                                   (default 0.05)
       "method": "fixed" | "sequential",                (default "fixed")
       "sequential_tuning": 5000,                       (default 5000)
       "control": STATS, "treatment": STATS}

  where STATS is ``{"n", "sum", "sum_squares"}`` for means, ``{"n", "sum"}`` for
  proportions and ``{"n", "numerator": {"sum", "sum_squares"}, "denominator": {"sum",
  "sum_squares"}, "sum_products"}`` for ratios.  For CUPED, a mean or proportion STATS also
  carries ``"pre": {"sum", "sum_squares"}`` and ``"sum_products_pre"`` (both arms or neither).
  A proportion's pre-period covariate whose ``sum_squares`` equals its ``sum`` (or is left
  out) is treated as 0/1 data, otherwise as a mean.

* ``{"srm": {"observed": [...], "weights": [...]}}`` -- sample-ratio mismatch.

* ``{"sample_size": {"metric": "proportion", "baseline", "mde", "alpha", "power"}}`` or
  ``{"sample_size": {"metric": "mean", "baseline_mean", "baseline_std", "mde", "alpha",
  "power"}}`` -- users per variant.

Unbounded interval ends are written as the strings ``"inf"`` / ``"-inf"`` (JSON has no
infinity).  Malformed input exits with status 2 and one line on stderr,
``error: <field>: <problem>``, e.g. ``error: control.sum_squares: required``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ab import power as _power
from ab import srm as _srm
from ab import statistics as _st

EXIT_INPUT_ERROR = 2
"""Exit status for input that cannot be analysed (argparse uses 2 for usage errors too)."""


class InputError(ValueError):
    """A request problem, reported as ``error: <field>: <message>``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Model(BaseModel):
    """Strict JSON shapes: no unknown keys, no strings for numbers, no floats for counts."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _MomentsIn(_Model):
    sum: float
    sum_squares: float


class _PreIn(_Model):
    sum: float
    sum_squares: float | None = None


class _MeanIn(_Model):
    n: int
    sum: float
    sum_squares: float
    pre: _MomentsIn | None = None
    sum_products_pre: float | None = None


class _ProportionIn(_Model):
    n: int
    sum: float
    pre: _PreIn | None = None
    sum_products_pre: float | None = None


class _RatioIn(_Model):
    n: int
    numerator: _MomentsIn
    denominator: _MomentsIn
    sum_products: float


class _TestRequest(_Model):
    metric: Literal["mean", "proportion", "ratio"]
    difference: Literal["relative", "absolute"] = "relative"
    alternative: Literal["two-sided", "greater", "less"] = "two-sided"
    alpha: float = 0.05
    method: Literal["fixed", "sequential"] = "fixed"
    sequential_tuning: float = _st.DEFAULT_SEQUENTIAL_TUNING
    control: dict[str, Any]
    treatment: dict[str, Any]


class _SrmIn(_Model):
    observed: list[int]
    weights: list[float] | None = None


class _SrmRequest(_Model):
    srm: _SrmIn


class _SampleSizeKind(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    metric: Literal["proportion", "mean"]


class _ProportionSizeIn(_Model):
    metric: Literal["proportion"]
    baseline: float
    mde: float
    alpha: float = 0.05
    power: float = 0.8


class _MeanSizeIn(_Model):
    metric: Literal["mean"]
    baseline_mean: float
    baseline_std: float
    mde: float
    alpha: float = 0.05
    power: float = 0.8


class _SampleSizeRequest(_Model):
    sample_size: dict[str, Any]


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Any, prefix: str = "") -> _M:
    """Validate ``data``, turning the first pydantic error into an :class:`InputError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path = ".".join(str(part) for part in (*([prefix] if prefix else []), *first["loc"]))
        raise InputError(path or "input", _message(first["type"], first["msg"])) from exc


def _message(kind: str, msg: str) -> str:
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if msg.startswith("Input should be "):
        return "must be " + msg.removeprefix("Input should be ")
    return msg


def _arm(metric: str, data: dict[str, Any], name: str) -> _st.ArmStats:
    """Build one arm's statistics, naming fields as ``<arm>.<field>`` in errors."""
    try:
        if metric == "ratio":
            ratio = _validate(_RatioIn, data, name)
            return _st.RatioStats(
                n=ratio.n,
                numerator=_st.Moments(ratio.numerator.sum, ratio.numerator.sum_squares),
                denominator=_st.Moments(ratio.denominator.sum, ratio.denominator.sum_squares),
                sum_products=ratio.sum_products,
            )
        if metric == "mean":
            mean = _validate(_MeanIn, data, name)
            post: _st.BaseStats = _st.MeanStats(mean.n, mean.sum, mean.sum_squares)
            pre_in: _MomentsIn | _PreIn | None = mean.pre
            products = mean.sum_products_pre
        else:
            prop = _validate(_ProportionIn, data, name)
            post = _st.ProportionStats(prop.n, prop.sum)
            pre_in = prop.pre
            products = prop.sum_products_pre
        if pre_in is None and products is None:
            return post
        if pre_in is None:
            raise InputError(f"{name}.pre", "required when sum_products_pre is given")
        if products is None:
            raise InputError(f"{name}.sum_products_pre", "required when pre is given")
        pre = _pre_stats(post, pre_in, name)
        return _st.CupedStats(post=post, pre=pre, sum_products_pre=products)
    except _st.StatisticsError as exc:
        raise InputError(f"{name}.{exc.field}", exc.message) from exc


def _pre_stats(post: _st.BaseStats, pre: _MomentsIn | _PreIn, name: str) -> _st.BaseStats:
    binary = isinstance(post, _st.ProportionStats) and (
        pre.sum_squares is None or pre.sum_squares == pre.sum
    )
    try:
        if binary:
            return _st.ProportionStats(post.n, pre.sum)
        if pre.sum_squares is None:
            raise InputError(f"{name}.pre.sum_squares", "required")
        return _st.MeanStats(post.n, pre.sum, pre.sum_squares)
    except _st.StatisticsError as exc:
        raise InputError(f"{name}.pre.{exc.field}", exc.message) from exc


def _number(value: float) -> float | str:
    """JSON has no infinity: write unbounded interval ends as strings."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _run_test(data: dict[str, Any]) -> dict[str, Any]:
    request = _validate(_TestRequest, data)
    control = _arm(request.metric, request.control, "control")
    treatment = _arm(request.metric, request.treatment, "treatment")
    cuped_c = isinstance(control, _st.CupedStats)
    if cuped_c != isinstance(treatment, _st.CupedStats):
        arm = "treatment" if cuped_c else "control"
        raise InputError(f"{arm}.pre", "required because the other arm has pre")
    try:
        result = _st.analyze(
            control,
            treatment,
            method=request.method,
            difference=request.difference,
            alternative=request.alternative,
            alpha=request.alpha,
            sequential_tuning=request.sequential_tuning,
        )
    except _st.StatisticsError as exc:
        raise InputError(exc.field, exc.message) from exc
    est = result.estimate
    return {
        "metric": request.metric,
        "method": result.method,
        "difference": est.difference,
        "alternative": result.alternative,
        "alpha": result.alpha,
        "effect": est.effect,
        "ci": [_number(result.ci[0]), _number(result.ci[1])],
        "std_error": est.std_error,
        "p_value": result.p_value,
        "significant": result.significant,
        "chance_to_win": result.chance_to_win,
        "df": est.df if result.method == "fixed" else None,
        "sequential_tuning": result.sequential_tuning,
        "control_n": est.control_n,
        "treatment_n": est.treatment_n,
        "control_mean": est.control_mean,
        "treatment_mean": est.treatment_mean,
        "cuped": est.cuped,
        "theta": est.theta,
    }


def _run_srm(data: dict[str, Any]) -> dict[str, Any]:
    request = _validate(_SrmRequest, data)
    try:
        result = _srm.srm_test(request.srm.observed, request.srm.weights)
    except _srm.SrmInputError as exc:
        raise InputError(f"srm.{exc.field}", exc.message) from exc
    return {
        "statistic": result.statistic,
        "p_value": result.p_value,
        "df": result.df,
        "observed": list(result.observed),
        "expected": list(result.expected),
    }


def _run_sample_size(data: dict[str, Any]) -> dict[str, Any]:
    request = _validate(_SampleSizeRequest, data)
    kind = _validate(_SampleSizeKind, request.sample_size, "sample_size")
    try:
        if kind.metric == "proportion":
            prop = _validate(_ProportionSizeIn, request.sample_size, "sample_size")
            size = _power.sample_size_proportion(
                prop.baseline, prop.mde, alpha=prop.alpha, power=prop.power
            )
        else:
            mean = _validate(_MeanSizeIn, request.sample_size, "sample_size")
            size = _power.sample_size_mean(
                mean.baseline_mean, mean.baseline_std, mean.mde, alpha=mean.alpha, power=mean.power
            )
    except _power.PowerInputError as exc:
        raise InputError(f"sample_size.{exc.field}", exc.message) from exc
    return {
        "metric": size.metric,
        "users_per_variant": size.users_per_variant,
        "total_users": size.total_users,
        "baseline": size.baseline,
        "mde": size.mde,
        "absolute_effect": size.absolute_effect,
        "alpha": size.alpha,
        "power": size.power,
        "achieved_power": size.achieved_power,
    }


def _reject_constant(name: str) -> float:
    raise InputError("input", f"{name} is not valid JSON")


def handle(text: str) -> dict[str, Any]:
    """Answer one JSON request; raises :class:`InputError` for anything malformed."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError("input", f"invalid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise InputError("input", "must be a JSON object")
    if "srm" in data:
        return _run_srm(data)
    if "sample_size" in data:
        return _run_sample_size(data)
    return _run_test(data)


def run(stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Read a request from ``stdin``, write the result to ``stdout``; return the exit status."""
    try:
        result = handle(stdin.read())
    except InputError as exc:
        stderr.write(f"error: {exc.field}: {exc.message}\n")
        return EXIT_INPUT_ERROR
    stdout.write(json.dumps(result, allow_nan=False) + "\n")
    return 0
