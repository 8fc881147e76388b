"""The per-position Gaussian that HLGFA's whitened terms score against: moments accumulated over normal
images, a shrunk inverse covariance, and the Mahalanobis norm at each position. Training fits the model's
statistics with these, and the baselines in bench/detection fit theirs with the same ones, so a baseline
differs from the model only in what it feeds them."""

import torch

from edge.core.errors import InputDataError

# Covariance shrinkage towards its mean variance: a position's covariance is estimated from as
# many vectors as there are normal images, fewer than it has entries at the deeper level.
ERROR_SHRINKAGE = 0.01


class PositionMoments:
    """Running per-level, per-position sums of vectors given as per-level N×C×h×w tensors."""

    def __init__(self, what: str):
        self.what = what
        self.sums, self.outer, self.count = None, None, 0

    def add(self, levels: list[torch.Tensor]) -> None:
        levels = [level.double() for level in levels]
        batch_sums = [level.sum(dim=0) for level in levels]
        batch_outer = [torch.einsum("nchw,ndhw->hwcd", level, level) for level in levels]
        self.sums = batch_sums if self.sums is None else [a + b for a, b in zip(self.sums, batch_sums)]
        self.outer = batch_outer if self.outer is None else [a + b for a, b in zip(self.outer, batch_outer)]
        self.count += len(levels[0])

    def moments(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(mean C×h×w, covariance (h·w)×C×C)] per level, float64, unshrunk."""
        count = self.count
        if count < 2:
            raise InputDataError(f"fitting the {self.what} statistics: {count} normal images, need at least 2")
        moments = []
        for total, products in zip(self.sums, self.outer):
            channels, height, width = total.shape
            mean = total / count
            per_position = mean.permute(1, 2, 0)  # h × w × C
            covariance = (products - count * per_position[..., :, None] * per_position[..., None, :]) / (count - 1)
            moments.append((mean, covariance.reshape(height * width, channels, channels)))
        return moments

    def gaussians(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(mean C×h×w, shrunk precision (h·w)×C×C)] per level, float32."""
        return [(mean.float(), shrunk_inverse(covariance).float()) for mean, covariance in self.moments()]


def position_moments(batches, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level and position, the mean and covariance of vectors given as batches of per-level
    N×C×h×w tensors: [(mean C×h×w, covariance (h·w)×C×C)], float64, unshrunk."""
    accumulator = PositionMoments(what)
    for levels in batches:
        accumulator.add(levels)
    return accumulator.moments()


def shrunk_inverse(covariance: torch.Tensor) -> torch.Tensor:
    """Inverse of …×C×C covariances, each shrunk towards its mean variance by ERROR_SHRINKAGE."""
    mean_variance = torch.diagonal(covariance, dim1=-2, dim2=-1).mean(dim=-1)
    identity = torch.eye(covariance.shape[-1], dtype=covariance.dtype)
    return torch.linalg.inv(covariance + (ERROR_SHRINKAGE * mean_variance + 1e-12)[..., None, None] * identity)


def whitened_distance(error: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Mahalanobis norm per position: error N×C×h×w, mean C×h×w, precision (h·w)×C×C → N×h×w.
    One batched matrix product over positions (exports as MatMul)."""
    batch, _, height, width = error.shape
    centred = (error - mean).flatten(2).permute(2, 0, 1)  # positions × N × C
    squared = (torch.matmul(centred, precision) * centred).sum(dim=2)  # positions × N
    return squared.clamp(min=0).sqrt().permute(1, 0).reshape(batch, height, width)
