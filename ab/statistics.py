r"""Two-arm experiment statistics from per-arm sufficient statistics.

Every function here works from sums that a database can aggregate per arm (``n``, ``sum``,
``sum_squares``, sums of products), never from per-user rows, and follows the conventions of
GrowthBook's open-source engine ``gbstats`` (``models/statistics.py``,
``frequentist/tests.py``) so that results agree with it to five decimals.

Sufficient statistics and per-unit variances
--------------------------------------------
Mean metric (:class:`MeanStats`), with the sample (``n - 1``) variance::

    mean = sum / n
    var  = (sum_squares - sum**2 / n) / (n - 1)

Proportion metric (:class:`ProportionStats`), ``sum`` = number of converted units::

    p   = sum / n
    var = p * (1 - p)

Ratio metric (:class:`RatioStats`), e.g. CTR = clicks / impressions with users randomised.
``M`` and ``D`` are the per-user numerator and denominator; the delta method gives the
per-user variance of the ratio estimate ``r = sum(M) / sum(D)`` including their covariance::

    cov(M, D) = (sum_products - sum(M) * sum(D) / n) / (n - 1)
    var       = var(M) / mean(D)**2 + var(D) * mean(M)**2 / mean(D)**4
                - 2 * cov(M, D) * mean(M) / mean(D)**3

CUPED (:class:`CupedStats`): a pre-period covariate ``X`` per unit.  One ``theta`` is pooled
over both arms, computed on the joint sample of ``N = n_c + n_t`` units exactly as gbstats'
``compute_theta`` does::

    theta        = cov_joint(Y, X) / var_joint(X)
    adjusted     = mean(Y) - theta * mean(X)
    adjusted var = var(Y) + theta**2 * var(X) - 2 * theta * cov(Y, X)

Covariances use ``(sum_products - sum_y * sum_x / n) / (n - 1)``, except that two
proportions use ``sum_products / n - sum_y * sum_x / n**2`` (matching ``p (1 - p)``).  When
``theta`` comes out exactly 0 (no variance in a period) the test reverts to the unadjusted
statistics, as gbstats does.

Effect and standard error
-------------------------
With per-arm means ``m_c``, ``m_t``, per-unit variances ``v_c``, ``v_t`` and sizes ``n_c``,
``n_t`` (arms are independent, so there is no covariance between them)::

    absolute:  effect = m_t - m_c
               se**2  = v_t / n_t + v_c / n_c
    relative:  effect = (m_t - m_c) / |m_c|
               se**2  = v_t / (n_t m_c**2) + v_c m_t**2 / (n_c m_c**4)      (delta method)

For CUPED the relative effect divides the *adjusted* difference by the *unadjusted* control
mean ``u_c`` (gbstats ``frequentist_variance_relative_cuped``)::

    effect = (a_t - a_c) / |u_c|
    se**2  = (v_t + theta**2 w_t - 2 theta c_t) / (n_t u_c**2)
             + (v_c u_t**2 / u_c**2 - 2 theta c_c u_t / u_c + theta**2 w_c) / (n_c u_c**2)

where ``v``/``w`` are the post/pre variances, ``c`` their covariance and ``u_t`` the
unadjusted treatment mean.

Fixed-horizon (Welch) test
--------------------------
Degrees of freedom by Welch-Satterthwaite on the per-unit variances (adjusted ones for
CUPED), for proportions too::

    df = (v_t/n_t + v_c/n_c)**2 / (v_t**2 / (n_t**2 (n_t-1)) + v_c**2 / (n_c**2 (n_c-1)))

With ``t = effect / se`` and ``T`` the Student t distribution with ``df`` degrees of freedom:

==============  ======================  ===================================================
alternative     p-value                 confidence interval
==============  ======================  ===================================================
two-sided       ``2 P(T > |t|)``        ``effect -/+ t_{1-alpha/2} se``
greater         ``P(T > t)``            ``[effect - t_{1-alpha} se, +inf)``
less            ``P(T < t)``            ``(-inf, effect + t_{1-alpha} se]``
==============  ======================  ===================================================

The sequential (always-valid) version of the same test lives in :mod:`ab.sequential`;
:func:`sequential_test` here combines it with the effect estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

from scipy import special as _special

from ab import sequential as _seq

Alternative: TypeAlias = Literal["two-sided", "greater", "less"]
"""``greater``: H1 is treatment > control; ``less``: treatment < control."""

Difference: TypeAlias = Literal["relative", "absolute"]
"""``relative``: (treatment - control) / |control|; ``absolute``: treatment - control."""

Method: TypeAlias = Literal["fixed", "sequential"]
"""``fixed``: fixed-horizon Welch t-test; ``sequential``: asymptotic confidence sequence."""

DEFAULT_SEQUENTIAL_TUNING = 5000.0
"""gbstats' default N*: the total sample size at which the confidence sequence is tightest."""

# Relative tolerance under which a slightly negative ``sum_squares - sum**2 / n`` is treated
# as floating-point cancellation of a zero variance rather than as impossible input.
_CANCELLATION_TOLERANCE = 1e-12


class StatisticsError(ValueError):
    """Statistics that cannot be analysed; ``field`` names the offending input.

    ``field`` is a dotted path relative to the object that raised it (``"sum_squares"``,
    ``"pre.sum"``) or an arm name (``"control"``) for problems found when comparing arms.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidStatisticsError(StatisticsError):
    """Sufficient statistics that no real sample could have produced."""


class UndefinedEffectError(StatisticsError):
    """Valid statistics for which the requested effect is undefined (zero variance, zero mean)."""


def _check_finite(field: str, value: float) -> None:
    if not math.isfinite(value):
        raise InvalidStatisticsError(field, "must be a finite number")


def _check_n(n: int) -> None:
    if n < 2:
        raise InvalidStatisticsError("n", "must be at least 2")


def _sample_variance(n: int, total: float, sum_squares: float, field: str) -> float:
    """``(sum_squares - total**2 / n) / (n - 1)``, rejecting clearly negative values."""
    centred = sum_squares - total * total / n
    if centred < 0.0:
        scale = max(abs(sum_squares), total * total / n)
        if centred < -_CANCELLATION_TOLERANCE * scale:
            raise InvalidStatisticsError(
                field, "implies a negative variance (sum_squares < sum**2 / n)"
            )
        centred = 0.0
    return centred / (n - 1)


@dataclass(frozen=True, slots=True)
class Moments:
    """Per-unit first and second moments of one quantity, for ratio components."""

    sum: float
    """Sum over units."""
    sum_squares: float
    """Sum over units of the squared value."""

    def __post_init__(self) -> None:
        _check_finite("sum", self.sum)
        _check_finite("sum_squares", self.sum_squares)


@dataclass(frozen=True, slots=True)
class MeanStats:
    """Sufficient statistics of a mean metric in one arm."""

    n: int
    """Number of randomisation units (users)."""
    sum: float
    """Sum of the metric over units."""
    sum_squares: float
    """Sum of the squared metric over units."""

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite("sum", self.sum)
        _check_finite("sum_squares", self.sum_squares)
        _sample_variance(self.n, self.sum, self.sum_squares, "sum_squares")

    @property
    def mean(self) -> float:
        """``sum / n``."""
        return self.sum / self.n

    @property
    def variance(self) -> float:
        """Sample variance with ``n - 1`` in the denominator."""
        return _sample_variance(self.n, self.sum, self.sum_squares, "sum_squares")


@dataclass(frozen=True, slots=True)
class ProportionStats:
    """Sufficient statistics of a proportion (conversion) metric in one arm."""

    n: int
    """Number of randomisation units (users)."""
    sum: float
    """Number of units that converted (0 <= sum <= n)."""

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite("sum", self.sum)
        if not 0.0 <= self.sum <= self.n:
            raise InvalidStatisticsError("sum", "must lie between 0 and n")

    @property
    def sum_squares(self) -> float:
        """A 0/1 outcome squares to itself."""
        return self.sum

    @property
    def mean(self) -> float:
        """Conversion rate ``sum / n``."""
        return self.sum / self.n

    @property
    def variance(self) -> float:
        """Bernoulli variance ``p (1 - p)`` (gbstats' convention, no ``n - 1`` correction)."""
        p = self.mean
        return p * (1.0 - p)


BaseStats: TypeAlias = MeanStats | ProportionStats


def _covariance(n: int, a: BaseStats, b: BaseStats, sum_products: float) -> float:
    """Per-unit covariance of two quantities measured on the same ``n`` units (gbstats)."""
    if isinstance(a, ProportionStats) and isinstance(b, ProportionStats):
        return sum_products / n - a.sum * b.sum / (n * n)
    return (sum_products - a.sum * b.sum / n) / (n - 1)


def _check_correlation(field: str, n: int, covariance: float, var_a: float, var_b: float) -> None:
    """Reject a sum of products that implies a correlation outside [-1, 1].

    The bound is loosened by ``n / (n - 1)`` because a proportion's ``p (1 - p)`` divides by
    ``n`` while a covariance with a mean metric divides by ``n - 1``.
    """
    slack = n / (n - 1)
    if abs(covariance) > math.sqrt(var_a * var_b) * slack * (1.0 + 1e-9) + 1e-300:
        raise InvalidStatisticsError(field, "implies a correlation outside [-1, 1]")


@dataclass(frozen=True, slots=True)
class RatioStats:
    """Sufficient statistics of a ratio metric (e.g. clicks / impressions) in one arm."""

    n: int
    """Number of randomisation units (users), not of denominator events."""
    numerator: Moments
    """Per-unit numerator (e.g. clicks per user)."""
    denominator: Moments
    """Per-unit denominator (e.g. impressions per user)."""
    sum_products: float
    """Sum over units of numerator * denominator."""

    def __post_init__(self) -> None:
        _check_n(self.n)
        _check_finite("sum_products", self.sum_products)
        var_m = _sample_variance(
            self.n, self.numerator.sum, self.numerator.sum_squares, "numerator.sum_squares"
        )
        var_d = _sample_variance(
            self.n, self.denominator.sum, self.denominator.sum_squares, "denominator.sum_squares"
        )
        if self.denominator.sum == 0.0:
            raise InvalidStatisticsError("denominator.sum", "must be non-zero")
        _check_correlation("sum_products", self.n, self.covariance, var_m, var_d)

    @property
    def numerator_stats(self) -> MeanStats:
        """The numerator as a mean metric over the same units."""
        return MeanStats(self.n, self.numerator.sum, self.numerator.sum_squares)

    @property
    def denominator_stats(self) -> MeanStats:
        """The denominator as a mean metric over the same units."""
        return MeanStats(self.n, self.denominator.sum, self.denominator.sum_squares)

    @property
    def covariance(self) -> float:
        """Per-unit covariance of numerator and denominator."""
        return (self.sum_products - self.numerator.sum * self.denominator.sum / self.n) / (
            self.n - 1
        )

    @property
    def mean(self) -> float:
        """The ratio ``sum(numerator) / sum(denominator)``."""
        return self.numerator.sum / self.denominator.sum

    @property
    def variance(self) -> float:
        """Per-unit delta-method variance of the ratio (divide by ``n`` for its SE**2)."""
        return variance_of_ratio(
            self.numerator.sum / self.n,
            self.numerator_stats.variance,
            self.denominator.sum / self.n,
            self.denominator_stats.variance,
            self.covariance,
        )


@dataclass(frozen=True, slots=True)
class CupedStats:
    """A mean or proportion metric with a pre-period covariate, for CUPED."""

    post: BaseStats
    """The metric itself, measured during the experiment."""
    pre: BaseStats
    """The covariate (usually the same metric before exposure) on the same units."""
    sum_products_pre: float
    """Sum over units of metric * covariate."""

    def __post_init__(self) -> None:
        if self.pre.n != self.post.n:
            raise InvalidStatisticsError("pre.n", "must equal n")
        _check_finite("sum_products_pre", self.sum_products_pre)
        _check_correlation(
            "sum_products_pre", self.n, self.covariance, self.post.variance, self.pre.variance
        )

    @property
    def n(self) -> int:
        """Number of randomisation units."""
        return self.post.n

    @property
    def covariance(self) -> float:
        """Per-unit covariance of metric and covariate."""
        return _covariance(self.n, self.post, self.pre, self.sum_products_pre)

    def adjusted_mean(self, theta: float) -> float:
        """``mean(Y) - theta * mean(X)``."""
        return self.post.mean - theta * self.pre.mean

    def adjusted_variance(self, theta: float) -> float:
        """Per-unit variance of ``Y - theta * X``."""
        return (
            self.post.variance + theta * theta * self.pre.variance - 2.0 * theta * self.covariance
        )


ArmStats: TypeAlias = MeanStats | ProportionStats | RatioStats | CupedStats
"""Sufficient statistics of one arm; both arms of a test must be of the same kind."""


def variance_of_ratio(
    mean_m: float, var_m: float, mean_d: float, var_d: float, cov_md: float
) -> float:
    """Delta-method variance of ``M / D`` (gbstats ``variance_of_ratios``)."""
    return var_m / mean_d**2 + var_d * mean_m**2 / mean_d**4 - 2.0 * cov_md * mean_m / mean_d**3


def _joint(a: BaseStats, b: BaseStats) -> BaseStats:
    """Both arms pooled into one sample (gbstats ``create_joint_statistic``)."""
    n = a.n + b.n
    if isinstance(a, ProportionStats) and isinstance(b, ProportionStats):
        return ProportionStats(n, a.sum + b.sum)
    return MeanStats(n, a.sum + b.sum, a.sum_squares + b.sum_squares)


def cuped_theta(control: CupedStats, treatment: CupedStats) -> float:
    """The CUPED coefficient pooled over both arms (gbstats ``compute_theta``).

    Returns 0 when the pooled metric or covariate has no variance, which means "do not adjust".
    """
    post = _joint(control.post, treatment.post)
    pre = _joint(control.pre, treatment.pre)
    if pre.variance == 0.0 or post.variance == 0.0:
        return 0.0
    sum_products = control.sum_products_pre + treatment.sum_products_pre
    return _covariance(post.n, post, pre, sum_products) / pre.variance


@dataclass(frozen=True, slots=True)
class EffectEstimate:
    """Point estimate and standard error of a treatment effect, before any test."""

    difference: Difference
    """Whether ``effect`` is relative or absolute."""
    effect: float
    """Point estimate of the effect."""
    std_error: float
    """Delta-method standard error of ``effect``."""
    df: float
    """Welch-Satterthwaite degrees of freedom."""
    control_n: int
    """Units in the control arm."""
    treatment_n: int
    """Units in the treatment arm."""
    control_mean: float
    """Unadjusted control mean (or ratio)."""
    treatment_mean: float
    """Unadjusted treatment mean (or ratio)."""
    control_variance: float
    """Per-unit variance used for the control arm (CUPED-adjusted when ``cuped``)."""
    treatment_variance: float
    """Per-unit variance used for the treatment arm (CUPED-adjusted when ``cuped``)."""
    cuped: bool
    """Whether CUPED adjustment was applied."""
    theta: float | None
    """The pooled CUPED coefficient, ``None`` without CUPED."""


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """Outcome of a fixed-horizon or sequential test of one metric."""

    estimate: EffectEstimate
    """The effect and its standard error."""
    method: Method
    """Which test produced ``ci`` and ``p_value``."""
    alternative: Alternative
    """The alternative hypothesis."""
    alpha: float
    """Significance level; the interval has coverage ``1 - alpha``."""
    ci: tuple[float, float]
    """Confidence interval (or confidence sequence); an unbounded side is +-inf."""
    p_value: float
    """p-value (always-valid for the sequential method), in [0, 1]."""
    sequential_tuning: float | None
    """N* of the confidence sequence; ``None`` for the fixed-horizon test."""

    @property
    def effect(self) -> float:
        """Shortcut for ``estimate.effect``."""
        return self.estimate.effect

    @property
    def std_error(self) -> float:
        """Shortcut for ``estimate.std_error``."""
        return self.estimate.std_error

    @property
    def significant(self) -> bool:
        """Whether ``p_value < alpha`` (equivalently, the interval excludes 0)."""
        return self.p_value < self.alpha

    @property
    def chance_to_win(self) -> float:
        """Approximate posterior probability that the effect is above 0 (the treatment's
        metric is higher): flat prior and the estimate's t approximation, so it equals one
        minus the one-sided fixed-horizon p-value. Descriptive only: watched repeatedly it
        inflates false wins like a peeked p-value; decisions use ``ci`` and ``p_value``."""
        effect, se = self.estimate.effect, self.estimate.std_error
        if se > 0.0:
            return _t_cdf(effect / se, self.estimate.df)
        return 1.0 if effect > 0.0 else 0.0 if effect < 0.0 else 0.5


def welch_df(var_c: float, n_c: int, var_t: float, n_t: int) -> float:
    """Welch-Satterthwaite degrees of freedom from per-unit variances."""
    se2_c = var_c / n_c
    se2_t = var_t / n_t
    return (se2_c + se2_t) ** 2 / (se2_t**2 / (n_t - 1) + se2_c**2 / (n_c - 1))


def _check_same_kind(control: ArmStats, treatment: ArmStats) -> None:
    if type(control) is not type(treatment):
        raise InvalidStatisticsError(
            "treatment",
            f"is {type(treatment).__name__} but control is {type(control).__name__}",
        )
    if isinstance(control, CupedStats) and isinstance(treatment, CupedStats):
        for part, kind_c, kind_t in (
            ("post", type(control.post), type(treatment.post)),
            ("pre", type(control.pre), type(treatment.pre)),
        ):
            if kind_c is not kind_t:
                raise InvalidStatisticsError(
                    f"treatment.{part}",
                    f"is {kind_t.__name__} but control's is {kind_c.__name__}",
                )


def estimate_effect(
    control: ArmStats, treatment: ArmStats, difference: Difference = "relative"
) -> EffectEstimate:
    """Estimate the treatment effect and its delta-method standard error.

    Args:
        control: sufficient statistics of the control (baseline) arm.
        treatment: sufficient statistics of the treatment arm, of the same kind.
        difference: ``"relative"`` for (t - c) / |c|, ``"absolute"`` for t - c.

    Raises:
        InvalidStatisticsError: the arms are of different kinds.
        UndefinedEffectError: an arm has zero variance, or the control mean is zero and a
            relative effect was asked for.
    """
    _check_same_kind(control, treatment)
    if isinstance(control, CupedStats) or isinstance(treatment, CupedStats):
        if not (isinstance(control, CupedStats) and isinstance(treatment, CupedStats)):
            raise InvalidStatisticsError("treatment", "must be CUPED statistics like control")
        theta = cuped_theta(control, treatment)
        if theta == 0.0:  # no variance in a period: revert to unadjusted, as gbstats does
            return estimate_effect(control.post, treatment.post, difference)
        var_c = control.adjusted_variance(theta)
        var_t = treatment.adjusted_variance(theta)
        _check_variances(var_c, var_t)
        relative_variance = None
        if difference == "relative":
            _check_baseline(control.post.mean)
            relative_variance = _relative_cuped_variance(control, treatment, theta)
        return _estimate(
            difference,
            (control.n, treatment.n),
            (control.adjusted_mean(theta), treatment.adjusted_mean(theta)),
            (control.post.mean, treatment.post.mean),
            (var_c, var_t),
            theta,
            relative_variance,
        )
    _check_variances(control.variance, treatment.variance)
    if difference == "relative":
        _check_baseline(control.mean)
    means = (control.mean, treatment.mean)
    return _estimate(
        difference,
        (control.n, treatment.n),
        means,
        means,
        (control.variance, treatment.variance),
        None,
        None,
    )


def _check_variances(var_c: float, var_t: float) -> None:
    for name, var in (("control", var_c), ("treatment", var_t)):
        if not var > 0.0:
            raise UndefinedEffectError(name, "has zero variance; the test is undefined")


def _check_baseline(control_mean: float) -> None:
    if control_mean == 0.0:
        raise UndefinedEffectError("control", "mean is zero; the relative effect is undefined")


def _estimate(
    difference: Difference,
    sizes: tuple[int, int],
    means: tuple[float, float],
    raw_means: tuple[float, float],
    variances: tuple[float, float],
    theta: float | None,
    relative_variance: float | None,
) -> EffectEstimate:
    """Assemble an estimate from per-arm (control, treatment) pairs."""
    n_c, n_t = sizes
    mean_c, mean_t = means
    raw_c, raw_t = raw_means
    var_c, var_t = variances
    if difference == "absolute":
        effect = mean_t - mean_c
        variance = var_t / n_t + var_c / n_c
    else:
        effect = (mean_t - mean_c) / abs(raw_c)
        variance = (
            relative_variance
            if relative_variance is not None
            else var_t / (n_t * raw_c**2) + var_c * raw_t**2 / (n_c * raw_c**4)
        )
    return EffectEstimate(
        difference=difference,
        effect=effect,
        std_error=math.sqrt(variance),
        df=welch_df(var_c, n_c, var_t, n_t),
        control_n=n_c,
        treatment_n=n_t,
        control_mean=raw_c,
        treatment_mean=raw_t,
        control_variance=var_c,
        treatment_variance=var_t,
        cuped=theta is not None,
        theta=theta,
    )


def _relative_cuped_variance(control: CupedStats, treatment: CupedStats, theta: float) -> float:
    """gbstats ``frequentist_variance_relative_cuped``; see the module docstring."""
    u_c = control.post.mean
    u_t = treatment.post.mean
    v_trt = treatment.adjusted_variance(theta) / (treatment.n * u_c**2)
    v_ctrl = (
        control.post.variance * u_t**2 / u_c**2
        - 2.0 * theta * control.covariance * u_t / u_c
        + theta**2 * control.pre.variance
    ) / (control.n * u_c**2)
    return v_trt + v_ctrl


def _check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise StatisticsError("alpha", "must lie strictly between 0 and 1")


def _t_cdf(x: float, df: float) -> float:
    """Student t CDF (``scipy.special.stdtr``: the same routine as ``scipy.stats.t``, 100x
    cheaper per call, which matters for simulations)."""
    return float(_special.stdtr(df, x))


def _t_quantile(q: float, df: float) -> float:
    """Student t quantile function."""
    return float(_special.stdtrit(df, q))


def t_test(estimate: EffectEstimate, alternative: Alternative, alpha: float) -> AnalysisResult:
    """Fixed-horizon Welch t-test of an effect estimate (gbstats ``TwoSidedTTest`` & co.)."""
    _check_alpha(alpha)
    pe, se, df = estimate.effect, estimate.std_error, estimate.df
    t_stat = pe / se
    ci: tuple[float, float]
    if alternative == "two-sided":
        p_value = 2.0 * _t_cdf(-abs(t_stat), df)
        half = _t_quantile(1.0 - alpha / 2.0, df) * se
        ci = (pe - half, pe + half)
    elif alternative == "greater":
        p_value = _t_cdf(-t_stat, df)
        ci = (pe - _t_quantile(1.0 - alpha, df) * se, math.inf)
    else:
        p_value = _t_cdf(t_stat, df)
        ci = (-math.inf, pe + _t_quantile(1.0 - alpha, df) * se)
    return AnalysisResult(
        estimate=estimate,
        method="fixed",
        alternative=alternative,
        alpha=alpha,
        ci=ci,
        p_value=min(p_value, 1.0),
        sequential_tuning=None,
    )


def confidence_sequence_test(
    estimate: EffectEstimate,
    alternative: Alternative,
    alpha: float,
    tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> AnalysisResult:
    """Always-valid test of an effect estimate; formulas in :mod:`ab.sequential`."""
    _check_alpha(alpha)
    n_total = estimate.control_n + estimate.treatment_n
    pe, se = estimate.effect, estimate.std_error
    ci: tuple[float, float]
    if alternative == "two-sided":
        rho = _seq.rho(alpha, tuning, two_sided=True)
        half = _seq.halfwidth_two_sided(se, n_total, alpha, rho)
        ci = (pe - half, pe + half)
        p_value = _seq.p_value_two_sided(pe, se, n_total, rho)
    else:
        if alpha >= 0.5:
            raise StatisticsError("alpha", "must be below 0.5 for a one-sided sequential test")
        rho = _seq.rho(alpha, tuning, two_sided=False)
        half = _seq.halfwidth_one_sided(se, n_total, alpha, rho)
        ci = (pe - half, math.inf) if alternative == "greater" else (-math.inf, pe + half)
        p_value = _seq.p_value_one_sided(pe, se, n_total, rho, alternative)
    return AnalysisResult(
        estimate=estimate,
        method="sequential",
        alternative=alternative,
        alpha=alpha,
        ci=ci,
        p_value=p_value,
        sequential_tuning=tuning,
    )


def fixed_horizon_test(
    control: ArmStats,
    treatment: ArmStats,
    *,
    difference: Difference = "relative",
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
) -> AnalysisResult:
    """Welch t-test of treatment against control, for a sample size fixed in advance.

    Example::

        result = fixed_horizon_test(MeanStats(3407, 1396.87, 52377.9767),
                                    MeanStats(3461, 2422.7, 134698.29))
        result.effect, result.ci, result.p_value   # 0.70732, (-0.03526, 1.44989), 0.06191
    """
    return t_test(estimate_effect(control, treatment, difference), alternative, alpha)


def sequential_test(
    control: ArmStats,
    treatment: ArmStats,
    *,
    difference: Difference = "relative",
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
    tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> AnalysisResult:
    """Confidence-sequence test that stays valid however often the results are looked at."""
    if not (math.isfinite(tuning) and tuning > 0.0):
        raise StatisticsError("sequential_tuning", "must be a positive number")
    return confidence_sequence_test(
        estimate_effect(control, treatment, difference), alternative, alpha, tuning
    )


def analyze(
    control: ArmStats,
    treatment: ArmStats,
    *,
    method: Method = "fixed",
    difference: Difference = "relative",
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
    sequential_tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> AnalysisResult:
    """Run the fixed-horizon or the sequential test, as ``method`` says."""
    if method == "sequential":
        return sequential_test(
            control,
            treatment,
            difference=difference,
            alternative=alternative,
            alpha=alpha,
            tuning=sequential_tuning,
        )
    return fixed_horizon_test(
        control, treatment, difference=difference, alternative=alternative, alpha=alpha
    )
