"""When two torch tensors count as the same: dtype, shape, quantization parameters and every byte.

Verification ("what was written equals what was read") uses this one definition: NaNs compare by
bit pattern, ``-0.0`` differs from ``0.0``, and a quantized tensor matches only with the same
scheme, scales, zero points and integer values.
"""

from __future__ import annotations

from typing import Any


def same_tensor(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` have the same dtype, shape, quantization and bytes.

    Args:
        a: a torch tensor.
        b: a torch tensor.

    Returns:
        Whether a reader could tell them apart.
    """
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape) or a.is_quantized != b.is_quantized:
        return False
    if a.is_quantized:
        if a.qscheme() != b.qscheme():
            return False
        if a.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            if a.q_scale() != b.q_scale() or a.q_zero_point() != b.q_zero_point():
                return False
        elif not (torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales())
                  and torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())
                  and a.q_per_channel_axis() == b.q_per_channel_axis()):
            return False
        a, b = a.int_repr(), b.int_repr()
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
