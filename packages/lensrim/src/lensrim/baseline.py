"""A plain optimiser of the likelihood, the reference the RIM has to beat.

The RIM turns T - 1 likelihood gradients into an estimate; Adam on the same log-likelihood,
started from the same point with the same number of gradients, shows what the learned
optimiser (and its implicit prior) adds over a hand-designed one.
"""

from __future__ import annotations

import torch

from lensrim.model import ForwardModel, map_moment_step, moment_step

__all__ = ["ascend_source", "optimise_likelihood"]


def optimise_likelihood(
    y: torch.Tensor,
    physics: ForwardModel,
    source: torch.Tensor,
    xi: torch.Tensor,
    *,
    steps: int,
    learning_rate: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise log p(y | source, kappa = 10^xi) with Adam for ``steps`` gradient evaluations.

    Every pixel of ``source`` and ``xi`` (each ``(B, 1, N, N)``) is a free parameter, with no
    prior; the examples of the batch are independent. Returns the final ``(source, xi)``.
    """
    if steps < 0 or not learning_rate > 0:
        raise ValueError(f"need steps >= 0 and a positive learning rate, got {steps} and {learning_rate}")
    x = torch.cat([source, xi], dim=1).detach().clone()
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    for t in range(1, steps + 1):
        gs, gxi = physics.gradient(y, x[:, :1], x[:, 1:])
        g = -torch.cat([gs, gxi], dim=1)  # descend on -log p
        m, v, step = moment_step(m, v, g, t, beta1=beta1, beta2=beta2, eps=eps, step_size=learning_rate)
        x = x - step
    return x[:, :1], x[:, 1:]


def ascend_source(
    y: torch.Tensor,
    physics: ForwardModel,
    source: torch.Tensor,
    xi: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    beta2: float = 0.9,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Steepest ascent of log p(y | source, kappa = 10^xi) in the source alone, kappa held fixed,
    for ``steps`` gradient evaluations: each step moves the source by ``step_size`` times the
    gradient over its map's root-mean-square (:func:`~lensrim.model.map_moment_step`).

    Lensing is linear in the source, so this is gradient descent on a least-squares problem: it
    shows how well a source alone can explain the data through a given kappa (the fit's
    degeneracy: ``docs/rim_ab.md``). Returns the final source ``(B, 1, N, N)``.
    """
    if steps < 0 or not step_size > 0:
        raise ValueError(f"need steps >= 0 and a positive step size, got {steps} and {step_size}")
    s = source.detach().clone()
    v = None
    for t in range(1, steps + 1):
        gs, _ = physics.gradient(y, s, xi)
        v, step = map_moment_step(v, gs, t, beta2=beta2, eps=eps)
        s = s + step_size * step
    return s
