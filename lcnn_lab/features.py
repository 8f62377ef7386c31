"""How redundant are a trained network's feature maps? The observation behind the Ghost module.

GhostNet (Han et al. 2020; long2024 §2.3) starts from pairs of similar feature maps in a trained
ResNet-50: if one map is (nearly) a cheap transform of another, the network could compute it cheaply.
Two measures of that, for the maps one layer of our own models produces on real test images:

* :func:`channel_similarity`: cosine similarity of every pair of channels (each map flattened over
  images and pixels), the "pairwise similarities" of the survey;
* :func:`ghost_fit`: how much of each channel's variance the best *cheap operation* explains, a
  single 3 x 3 filter (plus a bias) applied to one other channel: exactly what a Ghost module's
  depthwise operation can do. R^2 = 1 means a perfect ghost.

>>> maps = feature_maps(model, "stage1.act1", images)      # (N, C, H, W)
>>> best = ghost_fit(maps).best_r2                          # per channel, over the other channels
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["feature_maps", "channel_similarity", "GhostFit", "ghost_fit"]


def feature_maps(model: nn.Module, module_name: str, images: torch.Tensor) -> torch.Tensor:
    """The output of ``model``'s submodule ``module_name`` (e.g. ``"stage1.act1"``) for ``images``,
    a normalised float batch; the model is run in eval mode, without gradients."""
    modules = dict(model.named_modules())
    if module_name not in modules or not module_name:
        names = ", ".join(n for n in modules if n)
        raise ValueError(f"model has no submodule {module_name!r}; its submodules are: {names}")
    out: list[torch.Tensor] = []
    hook = modules[module_name].register_forward_hook(lambda m, i, o: out.append(o.detach()))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        hook.remove()
        model.train(was_training)
    return out[0]


def channel_similarity(maps: torch.Tensor) -> torch.Tensor:
    """(C, C) cosine similarity of the channels of ``maps`` (N, C, H, W), each channel flattened over
    images and pixels and centred (so a constant offset does not count as similarity)."""
    x = maps.transpose(0, 1).flatten(1).double()          # (C, N*H*W)
    x = x - x.mean(dim=1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (x @ x.t()).float()


@dataclass(frozen=True)
class GhostFit:
    """R^2 of fitting each target channel by a k x k filter of each source channel."""
    r2: torch.Tensor          # (C, C): r2[s, t] = variance of channel t explained by filtering channel s
    kernel_size: int

    @property
    def best_r2(self) -> torch.Tensor:
        """(C,) for each channel, the best R^2 over the *other* channels (a map is its own perfect ghost)."""
        r2 = self.r2.clone()
        r2.fill_diagonal_(float("-inf"))
        return r2.max(dim=0).values

    @property
    def best_source(self) -> torch.Tensor:
        """(C,) for each channel, the other channel that explains it best."""
        r2 = self.r2.clone()
        r2.fill_diagonal_(float("-inf"))
        return r2.argmax(dim=0)


def ghost_fit(maps: torch.Tensor, kernel_size: int = 3) -> GhostFit:
    """Fit every channel t of ``maps`` (N, C, H, W) as ``conv_kxk(channel s) + bias`` for every
    channel s by least squares, and return the R^2 of each fit.

    This is the Ghost module's cheap operation (one depthwise filter per ghost map) fitted after the
    fact: a high R^2 for some s says channel t could have been computed from s for k^2 MACs per pixel
    instead of a full convolution. Solved with the normal equations, all pairs at once: for C = 32
    channels of 256 16 x 16 maps it takes well under a second.
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be (N, C, H, W), got shape {tuple(maps.shape)}")
    n, c, h, w = maps.shape
    x = maps.double()
    k = kernel_size
    # design matrices: every k x k neighbourhood of every channel, plus a column of ones for the bias
    windows = nn.functional.unfold(x.reshape(n * c, 1, h, w), k, padding=k // 2)   # (N*C, k*k, H*W)
    windows = windows.view(n, c, k * k, h * w).permute(1, 0, 3, 2).reshape(c, n * h * w, k * k)
    design = torch.cat([windows, torch.ones(c, n * h * w, 1, dtype=x.dtype)], dim=2)  # (C, P, k*k+1)
    targets = x.transpose(0, 1).reshape(c, n * h * w).t()                            # (P, C)
    gram = design.transpose(1, 2) @ design                                           # (C, q, q)
    cross = torch.einsum("spq,pt->sqt", design, targets)                             # (C_s, q, C_t)
    ridge = 1e-8 * gram.diagonal(dim1=1, dim2=2).mean(dim=1).view(c, 1, 1) * torch.eye(k * k + 1,
                                                                                       dtype=x.dtype)
    weights = torch.linalg.solve(gram + ridge, cross)                                # (C_s, q, C_t)
    explained = (weights * cross).sum(dim=1)                                         # (C_s, C_t): w.b
    total = (targets ** 2).sum(dim=0)                                                # (C_t,)
    mean_sq = targets.sum(dim=0) ** 2 / targets.shape[0]
    # SSE = y.y - w.b at the optimum; R^2 = 1 - SSE / SST with SST = y.y - n*mean^2
    r2 = 1 - (total - explained) / (total - mean_sq).clamp(min=1e-12)
    return GhostFit(r2=r2.float(), kernel_size=k)
