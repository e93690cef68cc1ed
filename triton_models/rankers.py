"""Step 4 of the offline pipeline: the PyTorch rankers and their training loop.

- ``ranker_v2``: an MLP over the standardised features.
- ``ranker_v3``: DCN-v2 (Wang et al. 2021), a stack of full-rank cross layers
  ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` beside a deep MLP, concatenated into a linear head.

Both carry the training set's feature mean and standard deviation as buffers and standardise
inside ``forward``, and both end in a sigmoid, so the exported ONNX graph takes raw features
(``assemble_features`` output) and returns a probability: the served model is one step.

Training is pointwise (binary cross-entropy on "bought in the label window"), with Adam,
fixed seeds, and early stopping on the NDCG@10 of a held-out set of users.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from triton_models.dataset import RankingSet
from triton_models.ranking_quality import rank_by_score, ranking_metrics

_log = logging.getLogger(__name__)

RankerKind = Literal["mlp", "dcn"]
RANKERS: dict[str, RankerKind] = {"ranker_v2": "mlp", "ranker_v3": "dcn"}
"""Served model name -> architecture."""


class Standardise(nn.Module):
    """``(x - mean) / std``, the statistics frozen as buffers (constant columns get std 1)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: npt.NDArray[np.float32], std: npt.NDArray[np.float32]) -> None:
        super().__init__()
        safe = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(safe))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _mlp(width: int, hidden: tuple[int, ...], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    return nn.Sequential(*layers), width


class MlpRanker(nn.Module):
    """ranker_v2: standardise -> MLP -> logit; ``forward`` returns the sigmoid."""

    def __init__(self, standardise: Standardise, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.standardise = standardise
        self.deep, width = _mlp(len(standardise.mean), hidden, dropout)
        self.head = nn.Linear(width, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores ``[batch, 1]``."""
        out: torch.Tensor = self.head(self.deep(self.standardise(x)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


class CrossLayer(nn.Module):
    """One DCN-v2 cross layer: ``x0 * (W x + b) + x``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x0 * self.linear(x) + x
        return out


class DcnRanker(nn.Module):
    """ranker_v3: standardise -> [cross stack ‖ deep MLP] -> logit; ``forward`` is the sigmoid."""

    def __init__(
        self, standardise: Standardise, cross_layers: int, hidden: tuple[int, ...], dropout: float
    ) -> None:
        super().__init__()
        width = len(standardise.mean)
        self.standardise = standardise
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(cross_layers))
        self.deep, deep_width = _mlp(width, hidden, dropout)
        self.head = nn.Linear(width + deep_width, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores ``[batch, 1]``."""
        x0 = self.standardise(x)
        crossed = x0
        for layer in self.cross:
            crossed = layer(x0, crossed)
        out: torch.Tensor = self.head(torch.cat([crossed, self.deep(x0)], dim=1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


Ranker = MlpRanker | DcnRanker


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (modest: the full run must stay within minutes on 2 cores)."""

    hidden: tuple[int, ...] = (128, 64)
    cross_layers: int = 3
    dropout: float = 0.1
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    batch_size: int = 1024
    max_epochs: int = 10
    patience: int = 2
    seed: int = 0
    threads: int = 2
    progress: bool = True


@dataclass
class TrainResult:
    """The best model (by validation NDCG@10) and the per-epoch log."""

    model: Ranker
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def make_ranker(
    kind: RankerKind, mean: npt.NDArray[np.float32], std: npt.NDArray[np.float32], cfg: TrainConfig
) -> Ranker:
    """An untrained ranker of ``kind`` with the given standardisation."""
    standardise = Standardise(mean, std)
    if kind == "mlp":
        return MlpRanker(standardise, cfg.hidden, cfg.dropout)
    return DcnRanker(standardise, cfg.cross_layers, cfg.hidden, cfg.dropout)


def predict(
    model: nn.Module, features: npt.NDArray[np.float32], batch: int = 65_536
) -> npt.NDArray[np.float32]:
    """Scores (probabilities) of ``model`` on ``features``, shape ``[n]``."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), batch):
            out.append(model(torch.from_numpy(features[start : start + batch])).numpy()[:, 0])
    scores: npt.NDArray[np.float32] = np.concatenate(out or [np.empty(0, np.float32)])
    return scores.astype(np.float32)


def ndcg_of(scores: npt.NDArray[np.float32], data: RankingSet) -> float:
    """NDCG@10 of ranking each query's candidates by ``scores``."""
    ranked = rank_by_score(data.positions, scores, data.offsets)
    return ranking_metrics(ranked, data.relevant, k=10)["ndcg@10"]


def train_ranker(
    kind: RankerKind,
    train: RankingSet,
    valid: RankingSet,
    cfg: TrainConfig = TrainConfig(),  # noqa: B008
) -> TrainResult:
    """Trains a ranker on ``train``, early-stopped on ``valid``'s NDCG@10."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    mean = train.features.mean(axis=0)
    std = train.features.std(axis=0)
    model = make_ranker(kind, mean, std, cfg)
    optimiser = torch.optim.Adam(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    features = torch.from_numpy(train.features)
    labels = torch.from_numpy(train.labels)[:, None]
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = torch.from_numpy(rng.permutation(len(train.labels)))
        total = 0.0
        batches = range(0, len(order), cfg.batch_size)
        for start in tqdm(
            batches, desc=f"{kind} epoch {epoch}", disable=not cfg.progress, leave=False
        ):
            index = order[start : start + cfg.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model.logits(features[index]), labels[index])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
        valid_ndcg = ndcg_of(predict(model, valid.features), valid)
        history.append(
            {"epoch": epoch, "train_loss": total / max(len(order), 1), "valid_ndcg@10": valid_ndcg}
        )
        _log.info(
            "%s epoch %d: loss %.4f valid NDCG@10 %.4f",
            kind,
            epoch,
            history[-1]["train_loss"],
            valid_ndcg,
        )
        if valid_ndcg > best[0]:
            best = (valid_ndcg, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model=model, best_epoch=best[1], history=history)


def split_users(
    data: RankingSet, valid_share: float, seed: int = 0
) -> tuple[RankingSet, RankingSet]:
    """Deterministic split of queries into (train, valid) by a seeded permutation of users."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    cut = max(1, int(round(len(data) * valid_share)))
    valid = np.sort(order[:cut])
    train = np.sort(order[cut:])
    return data.subset(train), data.subset(valid)
