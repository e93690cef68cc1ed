"""An experiment analysis as files for notebooks: one JSON document and tidy CSV tables.

- `<experiment>.json`: configuration summary, per-variant sums and metric values, effects,
  SRM, the decision history (with its evidence) and every period's cumulative figures;
- `<experiment>_lift.csv`: one row per period end, treatment and metric (effect and CI);
- `<experiment>_arms.csv`: one row per period end and arm (users, counts, SRM p-value);
- `<experiment>_decisions.csv`: one row per decision (time, decision, reason).

Relative effects are fractions (0.05 is +5%); an unbounded interval limit is empty in CSV and
null in JSON; times are ISO 8601 in UTC.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ab.controller import MetricTest
from ab.report import Analysis, PeriodPoint
from ab.srm import SrmResult
from ab.variant_sums import METRICS

LIFT_COLUMNS = (
    "period_end",
    "variant",
    "metric",
    "control_value",
    "treatment_value",
    "relative_effect",
    "ci_low",
    "ci_high",
    "p_value",
    "control_users",
    "treatment_users",
)
ARM_COLUMNS = (
    "period_end",
    "variant",
    "users",
    "impressions",
    "clicks",
    "purchases",
    "orders",
    "revenue",
    "srm_p_value",
)
DECISION_COLUMNS = ("decided_at", "decision", "reason")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _strict_json(value: Any) -> Any:
    """NaN and infinities (never valid JSON) become null, at any depth."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def _srm_json(srm: SrmResult | None) -> dict[str, Any] | None:
    if srm is None:
        return None
    return {
        "observed": list(srm.observed),
        "expected": list(srm.expected),
        "statistic": srm.statistic,
        "p_value": srm.p_value,
    }


def _test_json(test: MetricTest) -> dict[str, Any]:
    return test.as_dict() | {"relative_effect": _finite(test.effect)}


def _point_json(analysis: Analysis, point: PeriodPoint) -> dict[str, Any]:
    return {
        "end": point.end.isoformat(),
        "label": analysis.period_label(point.end),
        "variants": {arm: s.as_dict() for arm, s in point.sums.items()},
        "effects": [_test_json(t) for t in point.tests],
        "srm": _srm_json(point.srm),
    }


def analysis_json(analysis: Analysis) -> dict[str, Any]:
    """The whole analysis as one JSON-ready mapping."""
    experiment = analysis.experiment
    state = analysis.state
    return {
        "experiment": experiment.name,
        "generated_at": analysis.generated_at.isoformat(),
        "period_seconds": analysis.period.total_seconds(),
        "decision_policy": experiment.decision_policy,
        "alpha": experiment.alpha,
        "primary_metric": experiment.primary_metric,
        "configured_weights": {v.name: v.weight for v in experiment.variants},
        "status": state.status if state else "running",
        "weights": dict(state.weights) if state and state.weights else None,
        "variants": {
            arm: s.as_dict() | {"values": {m: _finite(s.value(m)) for m in METRICS}}
            for arm, s in analysis.sums.items()
        },
        "effects": [_test_json(t) for t in analysis.tests],
        "srm": _srm_json(analysis.srm),
        "decisions": [
            {
                "id": d.id,
                "decided_at": d.decided_at.isoformat(),
                "decision": d.decision,
                "reason": d.reason,
                "evidence": dict(d.evidence),
            }
            for d in analysis.decisions
        ],
        "periods": [_point_json(analysis, p) for p in analysis.points],
    }


def lift_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """Rows of `<experiment>_lift.csv`."""
    return [
        {
            "period_end": point.end.isoformat(),
            "variant": t.variant,
            "metric": t.metric,
            "control_value": t.control_value,
            "treatment_value": t.treatment_value,
            "relative_effect": _finite(t.effect),
            "ci_low": _finite(t.ci[0]),
            "ci_high": _finite(t.ci[1]),
            "p_value": t.p_value,
            "control_users": t.control_n,
            "treatment_users": t.treatment_n,
        }
        for point in analysis.points
        for t in point.tests
    ]


def arm_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """Rows of `<experiment>_arms.csv` (arms without users yet have zeros)."""
    rows = []
    for point in analysis.points:
        for arm in analysis.arms:
            s = point.sums.get(arm)
            rows.append(
                {
                    "period_end": point.end.isoformat(),
                    "variant": arm,
                    "users": s.users if s else 0,
                    "impressions": s.impressions if s else 0.0,
                    "clicks": s.clicks if s else 0.0,
                    "purchases": s.purchases if s else 0.0,
                    "orders": s.orders if s else 0.0,
                    "revenue": s.revenue if s else 0.0,
                    "srm_p_value": point.srm.p_value if point.srm else None,
                }
            )
    return rows


def decision_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """Rows of `<experiment>_decisions.csv`."""
    return [
        {
            "decided_at": d.decided_at.isoformat(),
            "decision": d.decision,
            "reason": d.reason,
        }
        for d in analysis.decisions
    ]


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_report_files(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Writes the JSON document and the three CSV tables into `out_dir`; returns their paths."""
    name = analysis.experiment.name
    out_dir.mkdir(parents=True, exist_ok=True)
    document = out_dir / f"{name}.json"
    document.write_text(
        json.dumps(_strict_json(analysis_json(analysis)), indent=2, default=str, allow_nan=False)
        + "\n",
        encoding="utf-8",
    )
    return [
        document,
        _write_csv(out_dir / f"{name}_lift.csv", LIFT_COLUMNS, lift_rows(analysis)),
        _write_csv(out_dir / f"{name}_arms.csv", ARM_COLUMNS, arm_rows(analysis)),
        _write_csv(out_dir / f"{name}_decisions.csv", DECISION_COLUMNS, decision_rows(analysis)),
    ]
