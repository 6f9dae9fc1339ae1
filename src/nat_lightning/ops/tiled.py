"""The general pure-PyTorch neighborhood attention: dense attention on tiles, masked to the windows.

It serves what the faster row kernel (:mod:`.rows`) does not: attention weights, and dilations
that do not divide the map.

Queries are cut into ``T x T`` tiles. The windows of a tile's queries all lie inside one
``(T+k-1) x (T+k-1)`` region of keys, so each tile is one small dense attention whose logits
get the rpb added and everything outside each query's window set to ``-inf``. That turns the
op into batched matmuls and a softmax, which BLAS runs well, and
whose backward is ordinary autograd. Work and memory per query are ``(T+k-1)^2`` instead of
``k^2``: constant, so both grow linearly with the number of tokens.

Tiles and regions are gathered with one ``index_select`` over the flattened map. Two ways to
cut them, same result:
- strided (most maps): tile t's key region starts k//2 before its first query, whatever the
  border does; slots that fall off the map are masked. It serves dilation 1 whenever every
  clamped border window still lies in its tile's region (tiles of at least k//2+1 queries, the
  last one too), and dilation d when d divides the map, by folding the d x d dilation groups
  into the batch. Its output is a slice of the tiled map.
- indexed (any size, any dilation): tiles are cut inside each dilation group with index
  arithmetic; the output is gathered back.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .checks import check_na2d_args
from .windows import window_start


class AxisTiles(NamedTuple):
    """How one axis is cut into query tiles and key regions (all index tensors)."""

    tile: int  # queries per tile, T
    region: int  # keys per region, R = T + k - 1 (or fewer on short axes)
    query_index: torch.Tensor  # (n_tiles * T,) position of every query slot (padding repeats)
    key_index: torch.Tensor  # (n_tiles * R,) position of every key slot
    bias_index: (
        torch.Tensor
    )  # (n_tiles, T, R) rpb offset in [0, 2k-2], or 2k-1 = outside the window
    neighbor_slot: torch.Tensor  # (n_tiles, T, k) region slot of each window member
    inverse: torch.Tensor  # (length,) the query slot that holds each position
    strided: bool = False  # key slot r of tile t is position t*T + r - k//2 (may be padding)


@functools.lru_cache(maxsize=256)
def axis_tiles(length: int, kernel_size: int, dilation: int, tile: int, device: str) -> AxisTiles:
    """Tile one axis of ``length`` positions; cached, as layers reuse the same geometry."""
    k, d = kernel_size, dilation
    tile = max(1, min(tile, length // d - k + 1))  # the shortest group must hold a region
    region = tile + k - 1
    queries, keys, bias, slots = [], [], [], []
    inverse = torch.empty(length, dtype=torch.long)
    for group in range(d):
        group_len = len(range(group, length, d))
        starts = window_start(length, k, d)[group::d]  # (group_len,) group coordinates
        n_tiles = math.ceil(group_len / tile)
        for t in range(n_tiles):
            q = (t * tile + torch.arange(tile)).clamp(max=group_len - 1)  # repeat the last query
            first = min(int(starts[q[0]]), group_len - region)
            r = first + torch.arange(region)
            rel = r[None, :] - starts[q][:, None]  # (T, R) place of each key in each window
            inside = (rel >= 0) & (rel < k)
            bias.append(torch.where(inside, k - 1 + r[None, :] - q[:, None], 2 * k - 1))
            slots.append(starts[q][:, None] + torch.arange(k) - first)
            queries.append(group + d * q)
            keys.append(group + d * r)
        offset = sum(len(x) for x in queries[:-n_tiles]) if n_tiles < len(queries) else 0
        own = torch.arange(group_len)
        inverse[group + d * own] = offset + own
    return AxisTiles(
        tile,
        region,
        torch.cat(queries).to(device),
        torch.cat(keys).to(device),
        torch.stack(bias).to(device),
        torch.stack(slots).to(device),
        inverse.to(device),
    )


def strided_fits(length: int, kernel_size: int, tile: int) -> bool:
    """Whether strided tiles of ``tile`` queries hold every window: each tile, the last one
    too, must have at least k//2+1 queries, so a clamped border window stays in its region."""
    half, last = kernel_size // 2, length - (-(-length // tile) - 1) * tile
    return length >= kernel_size and tile >= half + 1 and last >= half + 1


@functools.lru_cache(maxsize=256)
def strided_tiles(length: int, kernel_size: int, tile: int, device: str) -> AxisTiles | None:
    """Tiles whose key regions are plain strided windows; None where that misses a window."""
    k, half = kernel_size, kernel_size // 2
    n_tiles = math.ceil(length / tile)
    if not strided_fits(length, k, tile):
        return None
    region = tile + k - 1
    queries = (
        torch.arange(n_tiles * tile).clamp(max=length - 1).view(n_tiles, tile)
    )  # pad slots repeat
    keys = (torch.arange(n_tiles) * tile - half)[:, None] + torch.arange(
        region
    )  # (n, R), may leave the map
    starts = window_start(length, k, 1)[queries]  # (n, T)
    rel = keys[:, None, :] - starts[:, :, None]  # (n, T, R)
    inside = (rel >= 0) & (rel < k)
    bias = torch.where(inside, k - 1 + keys[:, None, :] - queries[:, :, None], 2 * k - 1)
    slots = starts[:, :, None] + torch.arange(k) - keys[:, None, :1]
    # slots off the map are masked (bias index 2k-1) whatever they hold: read a clamped position
    return AxisTiles(
        tile,
        region,
        queries.flatten().to(device),
        keys.clamp(0, length - 1).flatten().to(device),
        bias.to(device),
        slots.to(device),
        torch.arange(length, device=device),
        strided=True,
    )


def _auto_tile(length: int, dilation: int) -> int:
    group_len = -(-length // dilation)
    best = 7
    for t in (8, 6):  # a loop, not min(key=...), which torch.compile cannot trace
        if -(-group_len // t) * t < -(-group_len // best) * best:
            best = t
    return best


def _fold_groups(x: torch.Tensor, d: int) -> torch.Tensor:
    """(B, H, W, ...) -> (B*d*d, H/d, W/d, ...): each dilation group becomes an image."""
    h, w = x.shape[1:3]
    x = x.view(-1, h // d, d, w // d, d, *x.shape[3:]).transpose(2, 3)  # (B, H/d, W/d, d, d, ...)
    return x.movedim((3, 4), (1, 2)).reshape(-1, h // d, w // d, *x.shape[5:])


def _unfold_groups(x: torch.Tensor, d: int) -> torch.Tensor:
    """Inverse of :func:`_fold_groups` for (B*d*d, h, w, ...)."""
    h, w = x.shape[1:3]
    x = x.view(-1, d, d, h, w, *x.shape[3:]).movedim((1, 2), (3, 4))  # (B, h, w, d, d, ...)
    return x.transpose(2, 3).reshape(-1, h * d, w * d, *x.shape[5:])


def _to_tiles(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, th: int, tw: int):
    """(B, H, W, heads, D) -> (B, heads, n_th*n_tw, th*tw, D), gathering ``rows`` x ``cols``.

    One ``index_select`` over the flattened map: its backward is a plain ``index_add``.
    """
    b, h, w, heads, dim = x.shape
    n_th, n_tw = rows.numel() // th, cols.numel() // tw
    flat = rows.view(n_th, 1, th, 1) * w + cols.view(1, n_tw, 1, tw)  # (n_th, n_tw, th, tw)
    x = x.reshape(-1, h * w, heads * dim).index_select(1, flat.flatten())
    return x.view(-1, n_th * n_tw, th * tw, heads, dim).permute(0, 3, 1, 2, 4)


def _bias(rpb: torch.Tensor | None, rows: AxisTiles, cols: AxisTiles, kernel_size: int, like):
    """Additive logits bias per tile: rpb inside each window, -inf outside. (heads|1, n, T*T, R*R)."""
    if rpb is None:
        rpb = torch.zeros(1, 2 * kernel_size - 1, 2 * kernel_size - 1, device=like.device)
    table = F.pad(rpb.to(like.dtype), (0, 1, 0, 1), value=float("-inf"))  # index 2k-1 is "masked"
    bh, bw = rows.bias_index, cols.bias_index
    bias = table[:, bh[:, None, :, None, :, None], bw[None, :, None, :, None, :]]
    # (heads, n_th, n_tw, T, T, R, R) -> (heads, n_th*n_tw, T*T, R*R)
    return bias.reshape(table.shape[0], -1, rows.tile * cols.tile, rows.region * cols.region)


def na2d_tiled(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    return_weights: bool = False,
    tile_size: int | None = None,
):
    """Exact neighborhood attention on ``(B, H, W, heads, D)``; see the module docstring.

    ``tile_size`` is the query tile edge; by default 6, 7 or 8, whichever wastes the fewest
    padded query slots (7 first on ties: it measured fastest for k=7 on a CPU).
    """
    check_na2d_args(query, key, value, kernel_size, dilation, rpb)
    batch, height, width, heads, head_dim = query.shape
    scale = head_dim**-0.5 if scale is None else scale
    d = dilation
    if d > 1 and height % d == 0 and width % d == 0:  # dilation groups as separate images
        folded = [_fold_groups(t, d) for t in (query, key, value)]
        result = na2d_tiled(*folded, kernel_size, 1, rpb, scale, return_weights, tile_size)
        if not return_weights:
            return _unfold_groups(result, d)
        out, weights = result
        weights = _unfold_groups(weights.movedim(1, -2), d).movedim(-2, 1)
        return _unfold_groups(out, d), weights
    dev = str(query.device)
    th, tw = tile_size or _auto_tile(height, d), tile_size or _auto_tile(width, d)
    rows = (strided_tiles(height, kernel_size, th, dev) if d == 1 else None) or axis_tiles(
        height, kernel_size, d, th, dev
    )
    cols = (strided_tiles(width, kernel_size, tw, dev) if d == 1 else None) or axis_tiles(
        width, kernel_size, d, tw, dev
    )
    q = _to_tiles(query, rows.query_index, cols.query_index, rows.tile, cols.tile)
    k = _to_tiles(key, rows.key_index, cols.key_index, rows.region, cols.region)
    v = _to_tiles(value, rows.key_index, cols.key_index, rows.region, cols.region)
    bias = _bias(rpb, rows, cols, kernel_size, query)  # (heads|1, n, T*T, R*R)
    logits = torch.matmul(q * scale, k.transpose(-1, -2)) + bias  # (B, heads, n, T*T, R*R)
    weights = logits.softmax(-1)
    out = torch.matmul(weights, v)  # (B, heads, n, T*T, D)
    n_th, n_tw = rows.bias_index.shape[0], cols.bias_index.shape[0]
    out = out.view(-1, heads, n_th, n_tw, rows.tile, cols.tile, head_dim)
    out = out.permute(0, 2, 4, 3, 5, 1, 6).reshape(
        -1, n_th * rows.tile, n_tw * cols.tile, heads, head_dim
    )
    out = _untile(out, rows, cols, 1, 2)
    if not return_weights:
        return out
    return out, _window_weights(weights, rows, cols, batch, heads, kernel_size)


def _untile(
    x: torch.Tensor, rows: AxisTiles, cols: AxisTiles, row_dim: int, col_dim: int
) -> torch.Tensor:
    """Drop padding query slots, per axis: a slice for strided tiles, a gather for indexed ones."""
    for tiles, dim in ((rows, row_dim), (cols, col_dim)):
        x = (
            x.narrow(dim, 0, tiles.inverse.numel())
            if tiles.strided
            else x.index_select(dim, tiles.inverse)
        )
    return x


def _window_weights(weights, rows: AxisTiles, cols: AxisTiles, batch, heads, kernel_size):
    """Pick each query's k*k window out of its tile's weights -> (B, heads, H, W, k*k)."""
    n_th, n_tw = rows.bias_index.shape[0], cols.bias_index.shape[0]
    w = weights.view(-1, heads, n_th, n_tw, rows.tile, cols.tile, rows.region, cols.region)
    sh, sw = rows.neighbor_slot, cols.neighbor_slot  # (n_t, T, k)
    a = torch.arange(n_th, device=w.device)[:, None, None, None, None, None]
    c = torch.arange(n_tw, device=w.device)[None, :, None, None, None, None]
    i = torch.arange(rows.tile, device=w.device)[None, None, :, None, None, None]
    j = torch.arange(cols.tile, device=w.device)[None, None, None, :, None, None]
    picked = w[:, :, a, c, i, j, sh[:, None, :, None, :, None], sw[None, :, None, :, None, :]]
    # (B, heads, n_th, n_tw, T, T, k, k) -> (B, heads, n_th*T, n_tw*T, k*k)
    picked = picked.permute(0, 1, 2, 4, 3, 5, 6, 7).reshape(
        batch, heads, n_th * rows.tile, n_tw * cols.tile, kernel_size * kernel_size
    )
    return _untile(picked, rows, cols, 2, 3)
