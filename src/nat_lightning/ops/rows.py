"""The fast pure-PyTorch neighborhood attention: one query row at a time, in cache.

The map is cut into column strips of ``T`` queries. The windows of query row ``i`` in strip
``s`` all lie in rows ``start(i) .. start(i)+k-1`` of the strip's key region, the ``T+k-1``
columns around the strip over the full height. With each strip's keys laid out as
``(row, column, D)``, those ``k`` rows are one contiguous slice, so each query row is one batched
matmul over all (batch, head, strip) that reads its keys in place.

Each row's logits are ``(T, k*(T+k-1))`` per strip: exact along rows, ``(T+k-1)/k`` padded along
columns (2x for k=7, T=8; 2.86x for T=14; square 7x7 tiles pad 3.4x), and small enough to stay
in cache while the bias is added and the softmax taken in place. Training keeps each row's
softmax (not its logits); the backward takes FlashAttention's ``dS = P * (dP - rowsum(dO * O))``
and gets each key row's gradients from one matmul over all the query rows that read it.

Serves dilation 1, and dilation ``d`` when ``d`` divides the map (the groups are folded into the
batch); :func:`na2d_torch` sends every other call to :func:`.na2d_tiled`.

Forward and backward are two ``torch.library`` custom ops, ``nat_lightning::na2d_rows`` and
``nat_lightning::na2d_rows_backward``, with fake (meta) implementations: torch.compile keeps each
one whole in its graph and compiles only the work around it. The backward is not differentiable
again; a double backward through it raises.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .checks import check_na2d_args
from .tiled import _fold_groups, _unfold_groups, na2d_tiled, strided_fits, strided_tiles
from .windows import window_start


class RowGeometry(NamedTuple):
    """Where every query row reads, for one (height, width, k, T) map; cached across calls."""

    tile: int  # queries per strip row, T
    region: int  # key columns per strip, R = T + k - 1; strip s starts at column s*T - k//2
    strips: int  # column strips, n (the last one may hold pad columns past the border)
    starts: tuple[int, ...]  # first window row of every query row
    first_reader: tuple[int, ...]  # first query row whose window holds each key row
    last_reader: tuple[int, ...]  # last such query row
    bias_index: torch.Tensor  # (H, n, T, k*R) into the (2k)^2 bias table; column 2k-1 = masked


def row_geometry(
    height: int, width: int, kernel_size: int, tile: int, device
) -> RowGeometry | None:
    """The geometry of the row kernel; None where strips of ``tile`` columns miss a window."""
    return _row_geometry(height, width, kernel_size, tile, str(device))


@functools.lru_cache(maxsize=64)
def _row_geometry(height, width, kernel_size, tile, device) -> RowGeometry | None:
    k = kernel_size
    cols = strided_tiles(
        width, k, tile, "cpu"
    )  # column strips: bias and masks per (strip, query, key)
    if cols is None or height < k:
        return None
    n, region = cols.bias_index.shape[0], cols.region
    starts = window_start(height, k, 1)
    row = torch.arange(height)
    row_bias = k - 1 + starts[:, None] + torch.arange(k) - row[:, None]  # (H, k) in [0, 2k-2]
    # (H, 1, 1, k, 1) x (1, n, T, 1, R) -> (H, n, T, k*R)
    bias_index = row_bias[:, None, None, :, None] * (2 * k) + cols.bias_index[None, :, :, None, :]
    reads = (starts[:, None] <= row) & (row < starts[:, None] + k)  # (query row, key row)
    readers = [reads[:, m].nonzero().flatten().tolist() for m in range(height)]
    return RowGeometry(
        tile,
        region,
        n,
        tuple(starts.tolist()),
        tuple(x[0] for x in readers),
        tuple(x[-1] for x in readers),
        bias_index.reshape(height, n, tile, -1).to(device),
    )


def _bias(
    rpb: torch.Tensor | None, geo: RowGeometry, heads: int, kernel_size: int, like: torch.Tensor
):
    """rpb inside every window, -inf outside: (H, heads*n, T, k*R), like's dtype."""
    k = kernel_size
    if rpb is None:
        rpb = torch.zeros(heads, 2 * k - 1, 2 * k - 1, device=like.device)
    table = F.pad(rpb.to(like.dtype), (0, 1, 0, 1), value=float("-inf")).reshape(heads, -1)
    bias = table[:, geo.bias_index]  # (heads, H, n, T, k*R)
    return bias.transpose(0, 1).reshape(geo.bias_index.shape[0], heads * geo.strips, geo.tile, -1)


# -- layouts: (B, H, W, heads, D) maps <-> per-strip tensors, N = B*heads*n ----------------------


def _query_rows(x: torch.Tensor, geo: RowGeometry) -> torch.Tensor:
    """(B, H, W, heads, D) -> a new (N, H, T, D), never a view of ``x``; pad columns are zeros."""
    b, h, w, heads, dim = x.shape
    if geo.strips * geo.tile > w:
        x = F.pad(x, (0, 0, 0, 0, 0, geo.strips * geo.tile - w))
    rows = x.new_empty(b, heads, geo.strips, h, geo.tile, dim)
    rows.copy_(x.view(b, h, geo.strips, geo.tile, heads, dim).permute(0, 4, 2, 1, 3, 5))
    return rows.view(-1, h, geo.tile, dim)


def _from_query_rows(x: torch.Tensor, shape, out: torch.Tensor | None = None) -> torch.Tensor:
    """(H, N, T, D) -> (B, H, W, heads, D), dropping pad columns; written into ``out`` if given."""
    b, h, w, heads, dim = shape
    t = x.shape[2]
    x = x.view(h, b, heads, -1, t, dim).permute(1, 0, 3, 4, 2, 5)  # (B, H, n, T, heads, D)
    out = x.new_empty(shape) if out is None else out
    whole = w // t  # strips inside the map; a last one may hold pad columns
    out[:, :, : whole * t].view(b, h, whole, t, heads, dim).copy_(x[:, :, :whole])
    if w > whole * t:
        out[:, :, whole * t :].copy_(x[:, :, whole, : w - whole * t])
    return out


def _key_strips(x: torch.Tensor, geo: RowGeometry) -> torch.Tensor:
    """(B, H, W, heads, D) -> a new (N, H*R, D): every strip's key region, row-major.

    Strip ``s`` holds map columns ``s*T - (k-1)/2`` onwards; columns off the map are zeros (the
    bias masks them). The strips inside the map are one strided copy, the border ones are copied
    and zero-filled apart: no padded copy of the map.
    """
    b, h, w, heads, dim = x.shape
    t, r, n = geo.tile, geo.region, geo.strips
    half = (r - t) // 2
    out = x.new_empty(b, heads, n, h, r, dim)
    src = x.transpose(1, 3).transpose(2, 3)  # (B, heads, H, W, D), a view
    inside = range(
        -(-half // t), (w + half - r) // t + 1
    )  # strips whose columns are all on the map
    if inside:
        s = src.stride()
        strips = src.as_strided(
            (b, heads, len(inside), h, r, dim),
            (s[0], s[1], t * s[3], s[2], s[3], s[4]),
            src.storage_offset() + (inside.start * t - half) * s[3],
        )
        out[:, :, inside.start : inside.stop].copy_(strips)
    for i in (i for i in range(n) if i not in inside):
        first = i * t - half  # map column of the strip's column 0
        begin, end = max(0, -first), min(r, w - first)  # the strip's columns on the map
        strip = out[:, :, i]  # (B, heads, H, R, D)
        strip[:, :, :, :begin].zero_()
        strip[:, :, :, end:].zero_()
        strip[:, :, :, begin:end].copy_(src[:, :, :, first + begin : first + end])
    return out.view(-1, h * r, dim)


def _from_key_rows(x: torch.Tensor, shape, geo: RowGeometry) -> torch.Tensor:
    """(H, N, R, D) per-strip key gradients -> (B, H, W, heads, D), summing where strips overlap."""
    b, h, w, heads, dim = shape
    t, r, n = geo.tile, geo.region, geo.strips
    half = (r - t) // 2
    full = x.new_zeros(b, h, n * t + 2 * half, heads, dim)
    s = full.stride()
    x = x.view(h, b, heads, n, r, dim)
    step = -(-r // t)  # strips this far apart do not overlap: add them in `step` rounds
    for first in range(step):
        count = len(range(first, n, step))
        view = full[:, :, first * t :].as_strided(
            (h, b, heads, count, r, dim), (s[1], s[0], s[3], step * t * s[2], s[2], s[4])
        )
        view.add_(x[:, :, :, first::step])
    return full[:, :, half : half + w]


# -- the op -------------------------------------------------------------------------------------


def _row_buffer(n: int, geo: RowGeometry, like: torch.Tensor) -> torch.Tensor:
    """(N, H*T*kR + start(H-1)*R): query row ``i``'s (T, k*R) block at ``i*T*kR + start(i)*R``.

    Placed so, the slice of key row ``m`` in reader ``i``, at ``i*T*kR + m*R``, moves by T*kR
    per reader, border readers included: the slices a key row reads from all its readers are one
    strided matrix, without copying (:func:`_key_row_grads`). Gaps of R open between interior rows.
    """
    kr, r = geo.bias_index.shape[-1], geo.region
    buffer = like.new_empty(n, len(geo.starts) * geo.tile * kr + geo.starts[-1] * r)
    for i in range(1, len(geo.starts)):  # the gaps are never read; zeroed so that the op's outputs
        end = i * geo.tile * kr + geo.starts[i] * r  # hold no uninitialised memory
        buffer[:, end - (geo.starts[i] - geo.starts[i - 1]) * r : end].zero_()
    return buffer


def _row(buffer: torch.Tensor, i: int, geo: RowGeometry) -> torch.Tensor:
    """Row ``i`` of a :func:`_row_buffer`, (N, T, k*R)."""
    kr = geo.bias_index.shape[-1]
    offset = i * geo.tile * kr + geo.starts[i] * geo.region
    return buffer[:, offset : offset + geo.tile * kr].view(buffer.shape[0], geo.tile, kr)


def _row_forward(
    query, key, value, rpb, kernel_size: int, scale: float, geo: RowGeometry, keep_probs: bool
):
    """The forward, row by row. Returns the tensors the backward needs; ``out`` is (H, N, T, D).

    With ``keep_probs`` every row's softmax is kept (a :func:`_row_buffer`) for the backward;
    without it (inference) each row's is a cache-sized temporary.
    """
    batch, height, _, heads, dim = query.shape
    k, r = kernel_size, geo.region
    q = _query_rows(query, geo).mul_(scale)  # (N, H, T, D)
    keys, values = _key_strips(key, geo), _key_strips(value, geo)  # (N, H*R, D)
    bias = _bias(rpb, geo, heads, k, query)  # (H, heads*n, T, k*R)
    out = query.new_empty(height, q.shape[0], geo.tile, dim)  # (H, N, T, D)
    probs = _row_buffer(q.shape[0], geo, query) if keep_probs else None
    for i, s in enumerate(geo.starts):
        window = slice(s * r, (s + k) * r)
        p = torch.bmm(
            q[:, i], keys[:, window].transpose(1, 2)
        )  # (N, T, k*R); bmm into a strided out is 5x slower
        p.view(batch, *bias.shape[1:]).add_(bias[i])
        torch.ops.aten._softmax.out(p, -1, False, out=p)  # in place (wrong into a strided out)
        if keep_probs:
            _row(probs, i, geo).copy_(p)
        torch.bmm(p, values[:, window], out=out[i])
    return q, keys, values, probs, out


def _row_backward(
    grad_out,
    output,
    q,
    keys,
    values,
    probs,
    rpb,
    kernel_size: int,
    scale: float,
    geo: RowGeometry,
    want_rpb: bool,
):
    """The backward, row by row: ``(grad_qkv, grad_rpb or None)``, the query, key and value
    gradients packed as ``(B, H, W, 3, heads, D)``: one tensor, written in place, instead of
    three that an unbind-backward would stack (a copy). ``output`` is the forward's result."""
    k, r = kernel_size, geo.region
    shape = grad_out.shape
    batch, height = shape[:2]
    grad_o = _query_rows(grad_out, geo)  # (N, H, T, D); zero on pad columns, so they add nothing
    grad_q = q.new_empty(height, q.shape[0], geo.tile, q.shape[-1])  # (H, N, T, D), by query row
    grad_k, grad_v = (
        q.new_empty(height, q.shape[0], r, q.shape[-1]),
        q.new_empty(height, q.shape[0], r, q.shape[-1]),
    )
    acc = torch.promote_types(q.dtype, torch.float32)  # bf16 sums over the batch lose too much
    grad_bias = (
        q.new_empty(height, q.shape[0] // batch, geo.tile, k * r, dtype=acc) if want_rpb else None
    )
    # rowsum(dP * P) = rowsum(dO * O): (N, H, T, 1)
    delta = _query_rows((grad_out * output).sum(-1, keepdim=True), geo)
    grad_s_rows, done = _row_buffer(q.shape[0], geo, q), 0
    for i, s in enumerate(geo.starts):
        window, grad_s = slice(s * r, (s + k) * r), _row(grad_s_rows, i, geo)
        grad_p = torch.bmm(grad_o[:, i], values[:, window].transpose(1, 2))
        # a strided out: one pass
        torch.mul(grad_p.sub_(delta[:, i]), _row(probs, i, geo), out=grad_s)
        if want_rpb:
            grad_bias[i] = grad_s.view(batch, -1, *grad_s.shape[1:]).sum(0, dtype=acc)
        torch.bmm(grad_s, keys[:, window], out=grad_q[i])
        while done < height and geo.last_reader[done] == i:  # key row `done` has all its readers
            _key_row_grads(done, geo, grad_s_rows, probs, q, grad_o, grad_k[done], grad_v[done])
            done += 1
    grad_qkv = grad_k.new_empty(*shape[:3], 3, *shape[3:])
    _from_query_rows(grad_q.mul_(scale), shape, out=grad_qkv[:, :, :, 0])
    grad_qkv[:, :, :, 1].copy_(_from_key_rows(grad_k, shape, geo))
    grad_qkv[:, :, :, 2].copy_(_from_key_rows(grad_v, shape, geo))
    return grad_qkv, _rpb_grad(grad_bias, geo, rpb, k) if want_rpb else None


def _key_row_grads(
    row: int, geo: RowGeometry, grad_s_rows, probs_rows, q, grad_o, grad_k, grad_v
) -> None:
    """dK and dV of key row ``row`` of every strip, from all the query rows that read it.

    One matmul over (reader rows x T) queries each, ``(N, R, c*T) @ (N, c*T, D)``, written once,
    instead of adding ``k`` thin ``(N, k*R, T) @ (N, T, D)`` products per query row. The left
    operand is each reader's R columns of this row, stacked: one strided view of the row buffers.
    """
    first, last, r = geo.first_reader[row], geo.last_reader[row], geo.region
    kr = geo.bias_index.shape[-1]

    def stacked(buffer):  # (N, c*T, R): reader i's slice of this row lies at i*T*kR + row*R
        offset = buffer.storage_offset() + first * geo.tile * kr + row * r
        return buffer.as_strided(
            (buffer.shape[0], (last - first + 1) * geo.tile, r), (buffer.stride(0), kr, 1), offset
        )

    grad_s, probs = stacked(grad_s_rows), stacked(probs_rows)
    n, dim = q.shape[0], q.shape[-1]
    torch.bmm(grad_s.transpose(1, 2), q[:, first : last + 1].reshape(n, -1, dim), out=grad_k)
    torch.bmm(probs.transpose(1, 2), grad_o[:, first : last + 1].reshape(n, -1, dim), out=grad_v)


def _rpb_grad(
    grad_bias: torch.Tensor, geo: RowGeometry, rpb: torch.Tensor, kernel_size: int
) -> torch.Tensor:
    """Sum the per-slot bias gradients into the (heads, 2k-1, 2k-1) table."""
    heads, size = rpb.shape[0], 2 * kernel_size
    grad = grad_bias.view(geo.bias_index.shape[0], heads, -1).transpose(0, 1).reshape(heads, -1)
    table = grad.new_zeros(heads, size * size).index_add_(1, geo.bias_index.flatten(), grad)
    return table.view(heads, size, size)[:, : size - 1, : size - 1].to(rpb.dtype).contiguous()


# -- the op for autograd and torch.compile: torch.library custom ops ------------------------------
# The row loop is opaque to the compiler: inductor fuses the work around the op and calls these as
# they are. The ops are named after this module, so a copy loaded under another name (as
# experiments/bench_ab.py loads rows.py at two revisions) registers its own instead of colliding.
_OP = "nat_lightning::na2d_" + __name__.rpartition(".")[2]  # nat_lightning::na2d_rows
Tensor = torch.Tensor  # the ops' annotations, which torch.library reads into their schemas


def _saved_shapes(shape, kernel_size: int, tile: int):
    """Shapes of what the forward keeps for the backward besides its output: q, keys, values
    and probs, each (N, ...) with N = B*heads*strips first, so no stride depends on the batch
    (torch.compile would specialise a dynamic batch on one that did)."""
    b, h, w, heads, dim = shape
    r, n = tile + kernel_size - 1, b * heads * (-(-w // tile))
    probs = h * tile * kernel_size * r + (h - kernel_size) * r  # _row_buffer; start(H-1) = H-k
    return (n, h, tile, dim), (n, h * r, dim), (n, h * r, dim), (n, probs)


@torch.library.custom_op(_OP, mutates_args=())
def _row_attention(
    query: Tensor,
    key: Tensor | None,
    value: Tensor | None,
    rpb: Tensor | None,
    kernel_size: int,
    scale: float,
    tile: int,
    keep: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(out, q, keys, values, probs)``: the output, then what the backward needs besides it
    (empty unless ``keep``). ``key`` and ``value`` None: ``query`` is the packed qkv,
    ``(B, H, W, 3, heads, D)``."""
    if key is None:
        query, key, value = query.unbind(3)
    geo = row_geometry(query.shape[1], query.shape[2], kernel_size, tile, query.device)
    if geo is None:
        raise ValueError(
            f"strips of {tile=} columns miss windows of a map {query.shape[2]} wide, "
            f"{kernel_size=}; see strided_fits"
        )
    *saved, rows = _row_forward(query, key, value, rpb, kernel_size, scale, geo, keep)
    out = _from_query_rows(rows, query.shape)
    return (out, *saved) if keep else (out, *(query.new_empty(0) for _ in saved))


@_row_attention.register_fake
def _(query, key, value, rpb, kernel_size, scale, tile, keep):
    shape = query.shape if key is not None else (*query.shape[:3], *query.shape[4:])
    saved = _saved_shapes(shape, kernel_size, tile) if keep else [(0,)] * 4
    return (query.new_empty(shape), *(query.new_empty(s) for s in saved))


@torch.library.custom_op(_OP + "_backward", mutates_args=())
def _row_attention_backward(
    grad_out: Tensor,
    output: Tensor,
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    probs: Tensor,
    rpb: Tensor | None,
    kernel_size: int,
    scale: float,
    tile: int,
    want_rpb: bool,
) -> tuple[Tensor, Tensor]:
    """``(grad_qkv, grad_rpb)``, the first packed ``(B, H, W, 3, heads, D)``; grad_rpb is empty
    unless ``want_rpb``."""
    geo = row_geometry(grad_out.shape[1], grad_out.shape[2], kernel_size, tile, grad_out.device)
    grad_qkv, grad_rpb = _row_backward(
        grad_out, output, q, keys, values, probs, rpb, kernel_size, scale, geo, want_rpb
    )
    return grad_qkv, grad_rpb if want_rpb else grad_qkv.new_empty(0)


def backward_fakes(grad_out: torch.Tensor, rpb: torch.Tensor | None, want_rpb: bool):
    """What a backward op returns, as fakes: ``(grad_qkv (B, H, W, 3, heads, D), grad_rpb)``."""
    b, h, w, heads, dim = grad_out.shape
    grad_rpb = rpb.new_empty(rpb.shape) if want_rpb else grad_out.new_empty(0)
    return grad_out.new_empty(b, h, w, 3, heads, dim), grad_rpb


@_row_attention_backward.register_fake
def _(grad_out, output, q, keys, values, probs, rpb, kernel_size, scale, tile, want_rpb):
    return backward_fakes(grad_out, rpb, want_rpb)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "na2d's row kernel (backend 'torch' on the CPU) is differentiable once: a double backward "
        "through it (create_graph=True, then a backward of the gradient) is not supported. "
        "Use backend='reference' for higher-order gradients."
    )


_row_attention_backward.register_autograd(_no_double_backward)


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # else autograd fills a zero gradient for each of them
    ctx.save_for_backward(*output, inputs[3])  # the output, what the forward kept, rpb
    ctx.packed, ctx.args = inputs[1] is None, inputs[4:7]  # (kernel_size, scale, tile)


def _backward(ctx, grad_out, *_):
    *saved, rpb = ctx.saved_tensors
    if grad_out is None:  # the output was not used
        return None, None, None, None, None, None, None, None
    want_rpb = rpb is not None and ctx.needs_input_grad[3]
    grad_qkv, grad_rpb = _row_attention_backward(grad_out, *saved, rpb, *ctx.args, want_rpb)
    grads = (grad_qkv, None, None) if ctx.packed else grad_qkv.unbind(3)
    return (*grads, grad_rpb if want_rpb else None, None, None, None, None)


_row_attention.register_autograd(_backward, setup_context=_setup_context)


def _dense(query, key, value, rpb, kernel_size: int, scale: float) -> torch.Tensor:
    """Plain attention with rpb, for maps of exactly ``k x k``: (B, k, k, heads, D) in and out."""
    k, heads, dim = query.shape[1], query.shape[3], query.shape[4]
    q, keys, values = (
        x.reshape(-1, k * k, heads, dim).transpose(1, 2) for x in (query, key, value)
    )
    logits = torch.matmul(q * scale, keys.transpose(-1, -2))  # (B, heads, k*k, k*k)
    if rpb is not None:
        pos = torch.arange(k, device=query.device)
        rel = pos[None, :] - pos[:, None] + k - 1  # (query, key) offset index along one axis
        logits = logits + rpb[:, rel[:, None, :, None], rel[None, :, None, :]].reshape(
            heads, k * k, k * k
        )
    out = torch.matmul(logits.softmax(-1), values)  # (B, heads, k*k, D)
    return out.transpose(1, 2).reshape(
        -1, k, k, heads, dim
    )  # -1, not b: traced exports keep a free batch


def _strip_width(width: int, kernel_size: int = 7) -> int:
    """The strip width whose strips hold every window (:func:`.strided_fits`) and pad the map
    least; on ties 14 for maps up to 28 wide, else 8, then 7, 6, and 9-13 last.

    Measured on 2 cores (experiments/bench_choices.py): at 14 and 28 px, 14-wide strips ran as
    fast as 7 in training and ~5% faster in inference (8 pads 28 to 32 and was slowest); at 56 px,
    8 beat 7 and 14 by ~7-10%. Maps 9, 43, 50, 51 and 57 wide (144, 200, 228 px inputs) tile with
    none of 6, 7, 8 and 14; there, and where 9-13 pad less (20 wide: 10, not 7), the least-padding
    width trained as fast or up to 1.2x faster (k=7, batch 8, one thread) and 1.0-1.6x the tiled kernel.
    """
    prefs = (14, 8, 7, 6) if width <= 28 else (8, 7, 6, 14)
    best = None
    for t in prefs + (9, 10, 11, 12, 13):  # a loop, not min(key=...): torch.compile traces this
        if strided_fits(width, kernel_size, t) and (
            best is None or -(-width // t) * t < -(-width // best) * best
        ):
            best = t
    return best or prefs[0]  # none fits: the caller takes the tiled kernel


def _rows_fastest(query: torch.Tensor) -> bool:
    """The row kernel beats the tiled one for fp32/fp64 on the CPU (experiments/README.md); its
    small bf16 matmuls measured slower there, and on GPUs its per-row launches would dominate.
    Tracing (ONNX export) gets the tiled kernel: one graph, no Python loop. Under torch.compile
    the row kernel serves every dtype and device, as one opaque op (:func:`_row_attention`): the
    tiled kernel is traced whole into the graph there (attention weights, dilations that do not
    divide the map), which compiles slowly (its index geometry is rebuilt in the trace)."""
    if torch.jit.is_tracing():
        return False
    if torch.compiler.is_compiling():
        return True
    return query.device.type == "cpu" and query.dtype in (torch.float32, torch.float64)


def na2d_torch(
    query,
    key,
    value,
    kernel_size: int,
    dilation: int = 1,
    rpb=None,
    scale: float | None = None,
    return_weights: bool = False,
    tile_size: int | None = None,
    qkv: torch.Tensor | None = None,
):
    """The torch backend: the row kernel where it applies and is fastest, :func:`.na2d_tiled` elsewhere.

    Same arguments as :func:`nat_lightning.ops.na2d`; ``tile_size`` is the strip width; ``qkv``
    is the packed ``(B, H, W, 3, heads, D)`` tensor that query, key and value are ``unbind(3)``
    views of, if they are (see :func:`nat_lightning.ops.na2d_qkv`).
    """
    check_na2d_args(query, key, value, kernel_size, dilation, rpb)
    height, width, head_dim = query.shape[1], query.shape[2], query.shape[-1]
    scale = head_dim**-0.5 if scale is None else scale
    d = dilation
    if return_weights or height % d or width % d:
        return na2d_tiled(
            query, key, value, kernel_size, dilation, rpb, scale, return_weights=return_weights
        )
    if d > 1:  # dilation groups as separate images
        if qkv is not None:
            qkv = _fold_groups(qkv, d)
            folded = qkv.unbind(3)
        else:
            folded = [_fold_groups(x, d) for x in (query, key, value)]
        out = na2d_torch(*folded, kernel_size, 1, rpb, scale, tile_size=tile_size, qkv=qkv)
        return _unfold_groups(out, d)
    if height == width == kernel_size:  # every window is the whole map
        return _dense(query, key, value, rpb, kernel_size, scale)
    tile = tile_size or _strip_width(width, kernel_size)
    if not strided_fits(width, kernel_size, tile) or not _rows_fastest(query):
        return na2d_tiled(query, key, value, kernel_size, 1, rpb, scale)
    inputs = (query, key, value) if rpb is None else (query, key, value, rpb)
    keep = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)  # for the backward
    packed = (qkv, None, None) if qkv is not None else (query, key, value)
    return _row_attention(*packed, rpb, kernel_size, scale, tile, keep)[0]
