"""Neighborhood attention through ``torch.nn.attention.flex_attention``: a block mask for the
windows and a ``score_mod`` that adds the rpb, for GPUs where NATTEN cannot serve rpb.

Compiled on CUDA, FlexAttention skips the blocks the mask rules out and fuses the rest. Without
compilation (and on the CPU) it materialises the N x N scores, and its CPU backward does not
exist, so ``auto`` never picks it; ask for ``backend="flex"`` explicitly.
"""

from __future__ import annotations

import functools

import torch


def _axis(index, length: int, kernel_size: int, dilation: int):
    """Group, position in group, and window start (group coordinates) of positions ``index``."""
    group, pos = index % dilation, index // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.clamp(pos - kernel_size // 2, min=0)
    return group, pos, torch.minimum(start, group_len - kernel_size)


@functools.lru_cache(maxsize=64)
def _block_mask(height: int, width: int, kernel_size: int, dilation: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def inside(b, h, q_idx, kv_idx):
        qg_i, _, qs_i = _axis(q_idx // width, height, kernel_size, dilation)
        qg_j, _, qs_j = _axis(q_idx % width, width, kernel_size, dilation)
        kg_i, kp_i, _ = _axis(kv_idx // width, height, kernel_size, dilation)
        kg_j, kp_j, _ = _axis(kv_idx % width, width, kernel_size, dilation)
        rows = (kg_i == qg_i) & (kp_i >= qs_i) & (kp_i < qs_i + kernel_size)
        cols = (kg_j == qg_j) & (kp_j >= qs_j) & (kp_j < qs_j + kernel_size)
        return rows & cols

    n = height * width
    return create_block_mask(inside, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device)


def na2d_flex(
    query, key, value, kernel_size: int, dilation: int = 1, rpb=None, scale: float | None = None
):
    """Same contract as :func:`nat_lightning.ops.na2d`, without ``return_weights``."""
    from torch.nn.attention.flex_attention import flex_attention

    batch, height, width, heads, head_dim = query.shape
    q, k, v = (
        t.reshape(batch, height * width, heads, head_dim).transpose(1, 2)
        for t in (query, key, value)
    )
    score_mod = None
    if rpb is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            _, qp_i, _ = _axis(q_idx // width, height, kernel_size, dilation)
            _, qp_j, _ = _axis(q_idx % width, width, kernel_size, dilation)
            _, kp_i, _ = _axis(kv_idx // width, height, kernel_size, dilation)
            _, kp_j, _ = _axis(kv_idx % width, width, kernel_size, dilation)
            # clamped: the score_mod also sees pairs the block mask drops
            top = 2 * kernel_size - 2
            row = torch.clamp(kernel_size - 1 + kp_i - qp_i, 0, top)
            col = torch.clamp(kernel_size - 1 + kp_j - qp_j, 0, top)
            return score + rpb[h, row, col]

    mask = _block_mask(height, width, kernel_size, dilation, str(query.device))
    out = flex_attention(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch, height, width, heads, head_dim)
