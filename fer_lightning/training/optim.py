"""RAdam whose rectified steps run PyTorch's fused Adam kernel on the CPU.

``torch.optim.RAdam`` has no fused kernel: on the CPU its multi-tensor step makes a dozen passes
over the 137 million weights of the Residual Masking Network, where the fused Adam kernel makes
one (the step times are in benchmarks/README.md). Once RAdam's variance is rectified
(from step 6 with the default betas) its update is Adam's with a per-step learning rate and eps:

    RAdam:  p -= lr * r_t * m_hat * sqrt(1 - b2^t) / (sqrt(v) + eps)
    Adam:   p -= lr' * m_hat / (sqrt(v) / sqrt(1 - b2^t) + eps')

which agree for ``lr' = lr * r_t`` and ``eps' = eps / sqrt(1 - b2^t)``; the moment updates and
the L2 weight decay are the same. So :class:`RAdam` hands those steps to ``torch.optim.Adam(
fused=True)`` over the same state tensors, and every other step (the first five, GPU tensors,
decoupled weight decay, sparse gradients) to ``torch.optim.RAdam`` itself. The state dict is
RAdam's, so checkpoints move freely between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class RAdam(torch.optim.RAdam):
    """``torch.optim.RAdam`` with the same arguments and numbers, fused on the CPU."""

    def __init__(self, params, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        self._adam: torch.optim.Adam | None = None

    def _fused_adam(self) -> torch.optim.Adam:
        """An Adam over the same parameters that reads and writes this optimiser's state."""
        if self._adam is None or len(self._adam.param_groups) != len(self.param_groups):
            groups = [{"params": group["params"]} for group in self.param_groups]
            self._adam = torch.optim.Adam(groups, fused=True)
        # Shared, not copied: load_state_dict replaces self.state, so relink on every step.
        self._adam.state = self.state
        return self._adam

    def _rectified_settings(self) -> list[dict] | None:
        """Per group, Adam's settings for this step; None where RAdam must take the step."""
        settings = []
        for group in self.param_groups:
            if group["decoupled_weight_decay"] or group["differentiable"]:
                return None
            if group["capturable"] or group["foreach"] is False:
                return None
            params = [p for p in group["params"] if p.grad is not None]
            steps = set()
            for p in params:
                state = self.state.get(p)
                if p.device.type != "cpu" or p.grad.is_sparse or not state:
                    return None
                if state["step"].device.type != "cpu":
                    return None
                steps.add(int(state["step"].item()))
            if len(steps) > 1:
                return None
            beta1, beta2 = group["betas"]
            step = (steps.pop() if steps else 0) + 1  # the step about to be taken
            bias_correction2 = 1 - beta2**step
            rho_inf = 2 / (1 - beta2) - 1
            rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
            if rho_t <= 5:
                return None
            rect = math.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
            settings.append(
                {
                    "lr": float(group["lr"]) * rect,
                    "eps": group["eps"] / math.sqrt(bias_correction2),
                    "betas": (beta1, beta2),
                    "weight_decay": group["weight_decay"],
                    "maximize": group["maximize"],
                }
            )
        return settings

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        settings = self._rectified_settings()
        if settings is None:
            super().step()
            return loss
        adam = self._fused_adam()
        for adam_group, setting in zip(adam.param_groups, settings, strict=True):
            adam_group.update(setting)
        adam.step()
        return loss
