"""Float comparisons for tests that must pass on any CPU, thread count and process layout.

Where the code promises bit-identity (same computation on the same inputs: resume, seeds, reload, an identity
init) tests use `torch.equal`. Where two computations agree only up to round-off (batched vs separate forwards,
our pipeline vs diffusers', another op order), the error is bounded relative to the magnitude of the compared
values: float32 round-off is relative (EPS per operation), and how much of it reaches the output depends on
the computation (network depth, sampling steps, a guidance scale s multiplying a branch difference by up to
1 + 2s), not on the machine. Which kernels a CPU picks decides where in that range a result lands, so an
absolute tolerance fit to one machine fails on another.
"""

from __future__ import annotations

import numpy as np
import torch

#: float32 machine epsilon (2^-23): the relative round-off of one operation
EPS = float(torch.finfo(torch.float32).eps)
#: one forward of a tiny test network (a U-Net, a CLIP tower, the VAE) computed two ways, e.g. batched vs
#: alone: each of its few dozen sequential layers may add a few EPS relative to the activations it sees, so
#: 128 EPS. A wrong input, branch, weight or channel order moves the output by a sizeable fraction of itself.
FORWARD_REL = 128 * EPS


def _float64(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return torch.as_tensor(x).detach().cpu().double()


def assert_close_rel(actual, expected, rel: float, what: str = "values") -> float:
    """max|actual - expected| <= rel * max|expected| (tensors, arrays or numbers); returns the relative error.

    The scale is the largest magnitude of `expected` (the smallest normal float32 if it is all zero, so zero
    must then be matched exactly). On failure both numbers are printed."""
    a, b = _float64(actual), _float64(expected)
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    scale = max(float(b.abs().max()) if b.numel() else 0.0, float(torch.finfo(torch.float32).tiny))
    err = float((a - b).abs().max()) if a.numel() else 0.0
    if not err <= rel * scale:  # also fails on NaN
        raise AssertionError(f"{what}: max|diff| = {err:.3e} > {rel:.2e} x max|expected| ({scale:.3e}) = "
                             f"{rel * scale:.3e}; relative error {err / scale:.3e}")
    return err / scale
