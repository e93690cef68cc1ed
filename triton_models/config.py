"""Typed settings of the `model` section: where built artefacts live, how stages use them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from feature_service.surfaces import DEFAULT_DISCOVERY_SLOTS

EVALUATION_REPORT = "evaluation.json"
"""The offline evaluation's report in `<artifacts_dir>/reports/` (`make models` writes it)."""


class CandidateGeneratorSettings(BaseModel):
    """Candidate retrieval (Annoy over item embeddings, merged with popular items)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    candidates: int = Field(500, ge=10, le=5000)
    """Number of candidates retrieved per request before filtering."""
    popular_candidates: int = Field(50, ge=0, le=1000)
    """Trending/popular items merged into every candidate set (cold start, freshness)."""
    search_k: int = Field(-1, ge=-1)
    """Annoy `search_k`; -1 uses the setting `make models` chose (overlap with exact search)."""
    exact_search_max_items: int = Field(50_000, ge=0)
    """Catalogues up to this many items are searched exactly (every inner product, as the
    ranker's training candidates were) instead of with Annoy: at that size brute force is both
    exact and faster. Larger catalogues use Annoy; 0 always uses Annoy."""
    retrieval_cache_size: int = Field(4096, ge=0)
    """Users whose retrieved candidates each gateway process keeps (least recently used
    first out; about 5 KB each); 0 retrieves on every request. A user's candidates depend only
    on their embedding and their past items, so an entry is exact until their purchases
    change, which changes its key."""


class RankerSettings(BaseModel):
    """The ranking model served by Triton."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    triton_grpc_url: str = "127.0.0.1:8001"
    """host:port of Triton's gRPC endpoint (model versions; inference too with
    `inference_protocol: grpc`)."""
    inference_protocol: Literal["http", "grpc"] = "http"
    """Which Triton endpoint scores requests: `http` (KServe v2 with binary tensors on
    persistent HTTP/1.1 connections) costs the gateway 0.52-0.60x the CPU per call of gRPC's
    `ModelInfer`, and tritonserver 0.84-0.91x (`benchmarks/triton_transport.py`)."""
    triton_http_url: str | None = None
    """host:port of Triton's HTTP endpoint; unset: the host of `triton_grpc_url` with the port
    just below its own (Triton's default 8000 / 8001 pair, and how `make run` starts it)."""
    default_model: str = "ranker_v2"
    """Ensemble used when no experiment assigns one."""
    timeout_ms: float = Field(40.0, gt=0)
    """Upper bound of one Triton call; the request's remaining deadline may make it shorter."""
    failure_threshold: int = Field(5, ge=1)
    """Consecutive Triton failures that open the circuit breaker (calls then fail at once)."""
    recovery_timeout_s: float = Field(5.0, gt=0)
    """How long the breaker stays open before one trial call."""
    max_abandoned_calls: int = Field(32, ge=1)
    """Triton calls the gateway stopped waiting for (deadline passed, caller gone) that may
    still be unanswered; beyond them calls fail at once. Calls are never cancelled (Triton
    before 24.12 can crash on a cancelled call), so these run to their end in Triton. Kept
    small: after a stall Triton would otherwise work through a backlog nobody waits for while
    new calls time out behind it (a soak at 175 req/s with 256 had minutes of 2 s latency).
    With `max_calls_in_flight` bounding the calls per model, a model whose every outstanding
    call has been given up on also fails at once."""
    max_calls_in_flight: int = Field(2, ge=1)
    """Triton calls per model and version outstanding at once (Triton's instance count);
    requests arriving meanwhile wait and share the next call (batching while busy: a call
    costs both sides about the same whatever its rows, so under load one serves several
    requests, while at low load a free slot sends at once)."""
    max_batch_rows: int = Field(4096, ge=1)
    """Most rows one call carries: at most the ranker's `max_batch_size` in Triton."""
    call_deadline_s: float = Field(30.0, gt=0)
    """Deadline of every Triton call, far above any request budget: only for a Triton that
    stopped answering altogether."""
    model_poll_interval_s: float = Field(5.0, gt=0)
    """How often the gateway asks Triton which model versions are ready (rollouts)."""
    prediction_cache_size: int = Field(20_000, ge=0)
    """Cached score vectors per process (0 disables the prediction cache)."""
    prediction_cache_ttl_s: float = Field(60.0, gt=0)
    """Lifetime of a cached score vector."""

    @model_validator(mode="after")
    def _http_url_known(self) -> RankerSettings:
        if self.triton_http_url is not None and self.triton_http_port() is None:
            raise ValueError(
                f"model.ranker.triton_http_url {self.triton_http_url!r} is not host:port"
            )
        self.inference_http_url()  # a grpc URL without a port cannot give the HTTP one
        return self

    def triton_http_port(self) -> int | None:
        """The port of `triton_http_url`, None when it is unset (or has none)."""
        port = (self.triton_http_url or "").rpartition(":")[2]
        return int(port) if port.isdigit() else None

    def inference_http_url(self) -> str | None:
        """Where inference calls go over HTTP (host:port), None when they use gRPC.

        Raises:
            ValueError: `triton_http_url` is unset and `triton_grpc_url` has no port to
                derive it from.
        """
        if self.inference_protocol == "grpc":
            return None
        if self.triton_http_url:
            return self.triton_http_url
        host, _, port = self.triton_grpc_url.rpartition(":")
        if not host or not port.isdigit() or int(port) < 2:
            raise ValueError(
                f"model.ranker.triton_grpc_url {self.triton_grpc_url!r} gives no HTTP port: "
                "set model.ranker.triton_http_url"
            )
        return f"{host}:{int(port) - 1}"


class RerankerSettings(BaseModel):
    """Re-ranking for diversity and business rules, applied after the ranker."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    diversity_weight: float = Field(0.0, ge=0.0, le=1.0)
    """Maximal-marginal-relevance trade-off: 0 keeps the ranker's order, 1 maximises diversity."""
    max_per_category: int = Field(0, ge=0)
    """At most this many items of one top-level category per response; 0 disables the cap."""
    filter_out_of_stock: bool = True
    """Drop items whose derived availability says out of stock."""
    filter_recently_viewed: bool = True
    """Drop items the user viewed within the recent-activity window."""
    filter_recently_purchased: bool = False
    """Drop items the user bought recently. Off: customers in this data re-buy the same items."""
    discovery_weight: float | None = Field(None, ge=0.0)
    """MIXED's price of a new product (`feature_service.surfaces.discovery_slots_for`). Unset:
    the weight `make models` chose on the validation queries for the models it built
    (`discovery_weight` in `<artifacts_dir>/reports/evaluation.json`), or
    `feature_service.surfaces.DISCOVERY_WEIGHT` without such a report."""
    discovery_slots: int = Field(DEFAULT_DISCOVERY_SLOTS, ge=0, le=100)
    """Items new to the customer a MIXED list holds at least when the model has no discovery
    head (with one, `feature_service.surfaces.discovery_slots_for` decides per customer); each
    one trades re-order recall for discovery (build/reports/evaluation.md measures 1 to 5)."""


class ModelSettings(BaseModel):
    """The `model` section: artefacts produced by `make models` and the stages that use them."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    data_dir: Path = Path("../shared/data/uci_online_retail")
    """Folder with the raw data (`online_retail.csv.gz`); read only by the offline pipeline."""
    artifacts_dir: Path = Path("build")
    """Root of everything `make models` writes: canonical tables, indexes, model repositories."""
    repository_dir: Path | None = None
    """Triton model repository whose metadata the gateway checks; default
    `<artifacts_dir>/triton/local`."""
    replay_data_clock: bool = True
    """Serve the historical data set as if its last day were today: feature times move back by
    whole weeks (hour and weekday kept). Off for live data."""
    candidate_generator: CandidateGeneratorSettings = CandidateGeneratorSettings()
    """Candidate retrieval settings."""
    ranker: RankerSettings = RankerSettings()
    """Ranker (Triton) settings."""
    reranker: RerankerSettings = RerankerSettings()
    """Re-ranking and business-rule settings."""
