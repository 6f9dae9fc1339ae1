"""NAT and DiNAT, top to bottom: outputs, helpers, attention, block, stage, the three models.

Module names follow SHI-Labs' original code (``patch_embed``, ``levels.i.blocks.j.attn.qkv``,
``head``), so original checkpoints load as they are; transformers' names are mapped in
checkpoints.py. The numerics follow transformers 4.40's NatModel/DinatModel, and the tests hold
them to its outputs. Feature maps are channels-last, ``(B, H, W, C)``, the layout neighborhood
attention works in; ``reshaped_hidden_states`` and ``feature_maps`` are ``(B, C, H, W)``.

Shapes for a ``(B, 3, H, W)`` input: the tokenizer gives ``(B, H/4, W/4, C)``; each stage but the
last halves the map (rounding up) and doubles the channels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import IGNORE_LABEL
from ..ops import BACKENDS, na2d, na2d_qkv
from ..ops.windows import window_index
from .config import NatConfig
from .pretrained import PretrainedMixin

_ACTIVATIONS = {
    "gelu": nn.GELU,  # exact erf GELU, as transformers' "gelu"
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}
Tensors = tuple[torch.Tensor, ...]


# -- outputs: attribute access like transformers' ModelOutput ---------------------------------


class _Output:
    """Also ``out["logits"]``, and ``out[0]`` for the first field that is set, as transformers."""

    def __getitem__(self, key: str | int):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def to_tuple(self) -> tuple:
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return tuple(v for v in values if v is not None)


@dataclass
class NatModelOutput(_Output):
    last_hidden_state: torch.Tensor | None = None  # (B, h, w, C) after the final norm
    pooler_output: torch.Tensor | None = None  # (B, C): mean of last_hidden_state over h, w
    hidden_states: Tensors | None = None  # (B, h_i, w_i, C_i): embeddings, then each stage
    attentions: Tensors | None = None  # per stage, its last block's: (B, heads, h_pad, w_pad, k*k)
    reshaped_hidden_states: Tensors | None = None  # hidden_states as (B, C_i, h_i, w_i)


@dataclass
class NatImageClassifierOutput(_Output):
    loss: torch.Tensor | None = None  # scalar, when labels are given
    logits: torch.Tensor | None = None  # (B, num_labels)
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    reshaped_hidden_states: Tensors | None = None


@dataclass
class BackboneOutput(_Output):
    feature_maps: Tensors | None = None  # (B, C_i, h_i, w_i) per out_feature, in stage order
    hidden_states: Tensors | None = None  # (B, h_i, w_i, C_i): stem, stages before downsampling
    attentions: Tensors | None = None


# -- helpers ------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's residual branch with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def factor(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-sample multipliers (B, 1, ..., 1): 0 for a dropped sample, else 1/(1-p) so the
        expectation is unchanged; None when nothing is dropped."""
        if self.p == 0.0 or not self.training:
            return None
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return keep.div_(1 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.factor(x)
        return x if factor is None else x * factor

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvTokenizer(nn.Module):
    """Two stride-2 3x3 convolutions instead of a 4x4 patchify: (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, num_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(num_channels, embed_dim // 2, 3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, 3, stride=2, padding=1),
        )
        # default eps whatever layer_norm_eps says, as transformers' NatEmbeddings
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # channels-last convolutions: ~1.3x faster fwd+bwd on CPU (experiments/bench_choices.py),
        # and the output's permute to (B, H/4, W/4, C) is then free
        x = self.proj(pixel_values.contiguous(memory_format=torch.channels_last))
        return self.norm(x.permute(0, 2, 3, 1))  # (B, H/4, W/4, C)


class ConvDownsampler(nn.Module):
    """A stride-2 3x3 convolution: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)  # default eps, as transformers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)  # transformers drops after fc2 only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


# -- attention, block, stage --------------------------------------------------------------------


class NeighborhoodAttention2D(nn.Module):
    """Multi-head (dilated) neighborhood attention with relative positional bias on (B, H, W, C).

    The math lives in :func:`nat_lightning.ops.na2d`; this module owns the projections and the
    ``rpb`` table, and pads maps smaller than the dilated window (see ``forward``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.kernel_size, self.dilation = kernel_size, dilation
        self.backend = backend  # an ops backend name; see NatPreTrainedModel.set_attention_backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # one matmul for query, key and value
        # bias by relative offset (dy, dx) in [-(k-1), k-1]^2, one table per head
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        height, width = x.shape[1:3]
        # NA needs at least kernel_size * dilation tokens per axis. Like transformers, zero-pad the
        # (normalised) map at the bottom/right, attend over the padded map, then crop; the padded
        # tokens still act as keys (their qkv is the projection bias), exactly as there.
        window = self.kernel_size * self.dilation
        pad_h, pad_w = max(0, window - height), max(0, window - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
        qkv = self.qkv(x).unflatten(
            -1, (3, self.num_heads, self.head_dim)
        )  # (B, Hp, Wp, 3, heads, D)
        dropout = self.training and self.attn_drop > 0
        if dropout or output_attentions:  # the weights are needed: (B, heads, Hp, Wp, k*k)
            q, k, v = qkv.unbind(3)  # each (B, Hp, Wp, heads, D)
            out, weights = na2d(
                q,
                k,
                v,
                self.kernel_size,
                self.dilation,
                self.rpb,
                backend=self.backend,
                return_weights=True,
            )
            if dropout:  # the op has no dropout: redo the weighted sum with dropped weights
                weights = F.dropout(weights, self.attn_drop, training=True)
                out = _weighted_values(weights, v, self.kernel_size, self.dilation)
        else:
            out = na2d_qkv(qkv, self.kernel_size, self.dilation, self.rpb, backend=self.backend)
            weights = None
        out = out.flatten(-2)[:, :height, :width]  # (B, H, W, C), padding cropped
        return self.proj_drop(self.proj(out)), weights


def _weighted_values(
    weights: torch.Tensor, value: torch.Tensor, kernel_size: int, dilation: int
) -> torch.Tensor:
    """The AV half of NA for given weights (B, heads, H, W, k*k) and values (B, H, W, heads, D)."""
    rows, _ = window_index(value.shape[1], kernel_size, dilation, value.device)  # (H, k)
    cols, _ = window_index(value.shape[2], kernel_size, dilation, value.device)  # (W, k)
    windows = value[:, rows[:, None, :, None], cols[None, :, None, :]]  # (B, H, W, k, k, heads, D)
    return torch.einsum("bhijn,bijnhd->bijhd", weights, windows.flatten(3, 4))


class NatBlock(nn.Module):
    """Pre-norm transformer block: x + NA(LN(x)), then x + MLP(LN(x)), each branch with optional
    layer scale (``gamma1``, ``gamma2``) and stochastic depth."""

    def __init__(
        self, config: NatConfig, dim: int, num_heads: int, dilation: int, drop_path: float
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = NeighborhoodAttention2D(
            dim,
            num_heads,
            config.kernel_size,
            dilation,
            qkv_bias=config.qkv_bias,
            attn_drop=config.attention_probs_dropout_prob,
            proj_drop=config.attention_probs_dropout_prob,
            backend=config.attention_backend,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(
            dim, int(dim * config.mlp_ratio), config.hidden_act, config.hidden_dropout_prob
        )
        self.layer_scale = config.layer_scale_init_value > 0
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), config.layer_scale_init_value))
            self.gamma2 = nn.Parameter(torch.full((dim,), config.layer_scale_init_value))

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        attn, weights = self.attn(self.norm1(x), output_attentions)  # (B, H, W, C)
        x = self._residual(x, attn, self.gamma1 if self.layer_scale else None)
        x = self._residual(x, self.mlp(self.norm2(x)), self.gamma2 if self.layer_scale else None)
        return x, weights

    def _residual(
        self, x: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor | None
    ) -> torch.Tensor:
        """``x + drop_path(gamma * branch)`` in one pass: stochastic depth's per-sample factor
        and the layer scale fold into one small multiplier for ``addcmul``."""
        factor = self.drop_path.factor(x)  # (B, 1, 1, 1) or None
        if gamma is not None:
            factor = gamma if factor is None else factor * gamma
        return x + branch if factor is None else torch.addcmul(x, branch, factor)


class NatStage(nn.Module):
    """The blocks of one resolution, then (except in the last stage) a downsampler."""

    def __init__(self, config: NatConfig, stage: int, drop_paths: list[float]):
        super().__init__()
        dim = config.embed_dim * 2**stage
        self.blocks = nn.ModuleList(
            NatBlock(config, dim, config.num_heads[stage], dilation, p)
            for dilation, p in zip(config.block_dilations(stage), drop_paths)
        )
        self.downsample = ConvDownsampler(dim) if stage < len(config.depths) - 1 else None

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        """(B, H, W, C) -> (downsampled, before downsampling, last block's attention weights)."""
        weights = None
        for block in self.blocks:
            x, weights = block(x, output_attentions)
        before = x
        if self.downsample is not None:
            x = self.downsample(x)  # (B, ceil(H/2), ceil(W/2), 2C)
        return x, before, weights


def _levels(config: NatConfig) -> nn.ModuleList:
    """All stages; stochastic depth grows linearly from 0 to drop_path_rate over all blocks."""
    rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
    bounds = [sum(config.depths[:i]) for i in range(len(config.depths) + 1)]
    return nn.ModuleList(
        NatStage(config, i, rates[bounds[i] : bounds[i + 1]]) for i in range(len(config.depths))
    )


# -- optimiser groups: what each model declares (as timm's group_matcher / no_weight_decay) -------

# Not decayed, as in the paper's code: norms' weights and biases, every bias, the rpb tables and the
# layer scales. Decided by a parameter's own name and its module's type, never by its shape: under
# FSDP (use_orig_params) every parameter is a 1-D view of this rank's shard, often empty.
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
NO_DECAY_NAMES = frozenset({"bias", "rpb", "gamma1", "gamma2"})


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The full names of ``model``'s parameters kept out of weight decay."""
    return {
        f"{prefix}.{own}" if prefix else own
        for prefix, module in model.named_modules()
        for own, _ in module.named_parameters(recurse=False)
        if isinstance(module, NORMS) or own in NO_DECAY_NAMES
    }


def layer_ids_of(prefix: str, module: nn.Module | None, layer: int) -> dict[str, int]:
    """``{full name: layer}`` for every parameter of ``module``, named under ``prefix``."""
    return {} if module is None else {n: layer for n, _ in module.named_parameters(prefix=prefix)}


# -- models -------------------------------------------------------------------------------------


class NatPreTrainedModel(PretrainedMixin, nn.Module):
    """What the three models share: running the stages, weight init, backend choice, and
    (from PretrainedMixin) ``from_pretrained``/``save_pretrained``."""

    config: NatConfig
    patch_embed: ConvTokenizer
    pos_drop: nn.Dropout
    levels: nn.ModuleList

    def forward_stages(self, pixel_values: torch.Tensor, output_attentions: bool = False):
        """Embeddings, then every stage: lists of states after and before downsampling, and of
        each stage's last attention weights (None unless ``output_attentions``)."""
        channels = self.config.num_channels
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must be (batch, {channels}, height, width), "
                f"got pixel_values.shape={tuple(pixel_values.shape)}"
            )
        x = self.pos_drop(self.patch_embed(pixel_values))  # (B, H/4, W/4, C)
        after, before, attentions = [x], [x], []
        for level in self.levels:
            x, x_before, weights = level(x, output_attentions)
            after.append(x)
            before.append(x_before)
            attentions.append(weights)
        return after, before, attentions

    def _stage_layer_ids(self) -> dict[str, int]:
        """Layer ids for layer-wise LR decay: 0 the patch embedding, 1..L the blocks in order, a
        downsampler with the last block of its stage. ``layer_ids`` adds what follows the
        stages at L + 1."""
        ids = layer_ids_of("patch_embed", self.patch_embed, 0)
        layer = 0
        for i, level in enumerate(self.levels):
            for j, block in enumerate(level.blocks):
                layer += 1
                ids |= layer_ids_of(f"levels.{i}.blocks.{j}", block, layer)
            ids |= layer_ids_of(f"levels.{i}.downsample", level.downsample, layer)
        return ids

    @property
    def top_layer_id(self) -> int:
        return sum(self.config.depths) + 1

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters AdamW does not decay (norms, biases, rpb, layer scales)."""
        return no_weight_decay_names(self)

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init: N(0, initializer_range) weights, zero biases and rpb, unit norms."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, NeighborhoodAttention2D):
            nn.init.zeros_(module.rpb)
        elif isinstance(module, NatBlock) and module.layer_scale:
            nn.init.constant_(module.gamma1, self.config.layer_scale_init_value)
            nn.init.constant_(module.gamma2, self.config.layer_scale_init_value)

    def init_weights(self) -> None:
        self.apply(self._init_weights)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every attention layer (and the config) to another nat_lightning.ops backend."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got backend={backend!r}")
        self.config.attention_backend = backend
        for module in self.modules():
            if isinstance(module, NeighborhoodAttention2D):
                module.backend = backend


class NatModel(NatPreTrainedModel):
    """The NAT/DiNAT encoder: tokenizer, stages, final norm, average pooling."""

    _kind = "model"

    def __init__(self, config: NatConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        # False: pooler_output is None (the pooling has no weights either way)
        self.add_pooling_layer = add_pooling_layer
        self.patch_embed = ConvTokenizer(config.num_channels, config.embed_dim)
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        self.levels = _levels(config)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.init_weights()

    def layer_ids(self) -> dict[str, int]:
        """Every parameter's layer id (see ``_stage_layer_ids``); the final norm on top."""
        return self._stage_layer_ids() | layer_ids_of("norm", self.norm, self.top_layer_id)

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> NatModelOutput:
        after, _, attentions = self.forward_stages(pixel_values, output_attentions)
        last = self.norm(after[-1])  # (B, h, w, C)
        reshaped = tuple(h.permute(0, 3, 1, 2) for h in after)  # views, no copies
        return NatModelOutput(
            last_hidden_state=last,
            pooler_output=last.mean(dim=(1, 2)) if self.add_pooling_layer else None,
            hidden_states=tuple(after) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            reshaped_hidden_states=reshaped if output_hidden_states else None,
        )


class NatForImageClassification(NatPreTrainedModel):
    """NatModel + a linear head on the pooled features (``nn.Identity`` if num_labels is 0)."""

    _kind, _prefix = "classifier", "nat."

    def __init__(self, config: NatConfig):
        super().__init__()
        self.config = config
        self.nat = NatModel(config)
        self.head = (
            nn.Linear(config.hidden_size, config.num_labels)
            if config.num_labels > 0
            else nn.Identity()
        )
        self.head.apply(self._init_weights)

    def layer_ids(self) -> dict[str, int]:
        """Every parameter's layer id: the encoder's, and the head on top."""
        ids = {f"nat.{name}": layer for name, layer in self.nat.layer_ids().items()}
        return ids | layer_ids_of("head", self.head, self.top_layer_id)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> NatImageClassifierOutput:
        """``labels``: class ids (B,) (-100 is ignored), soft targets (B, num_labels) such as
        mixup's, or regression targets when num_labels is 1."""
        out = self.nat(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        logits = self.head(out.pooler_output)  # (B, num_labels)
        return NatImageClassifierOutput(
            loss=None if labels is None else classification_loss(logits, labels),
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            reshaped_hidden_states=out.reshaped_hidden_states,
        )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MSE for one output; cross-entropy for class ids (ignore_index -100) or soft targets."""
    if logits.shape[-1] == 1:  # regression, as transformers with num_labels == 1
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    if labels.is_floating_point():
        if labels.shape != logits.shape:
            raise ValueError(
                "float labels are soft targets and must have the logits' shape "
                f"{tuple(logits.shape)}, got labels.shape={tuple(labels.shape)}"
            )
        return torch.sum(-labels * logits.log_softmax(-1), dim=-1).mean()
    return F.cross_entropy(logits, labels.view(-1), ignore_index=IGNORE_LABEL)


class NatBackbone(NatPreTrainedModel):
    """Multi-scale features for detection/segmentation heads: ``feature_maps`` (B, C, h, w).

    As transformers' NatBackbone: the stages selected by ``out_features``/``out_indices`` among
    ``stage_names`` (``stem``, ``stage1``, ...), taken before downsampling, each through its own
    LayerNorm; there is no final norm.
    """

    _kind = "backbone"

    def __init__(self, config: NatConfig):
        super().__init__()
        self.config = config
        self.patch_embed = ConvTokenizer(config.num_channels, config.embed_dim)
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        self.levels = _levels(config)
        self.num_features = [config.embed_dim] + [
            config.embed_dim * 2**i for i in range(len(config.depths))
        ]
        self.hidden_states_norms = nn.ModuleDict(
            {
                name: nn.LayerNorm(channels)
                for name, channels in zip(config.out_features, self.channels)
            }
        )
        self.init_weights()

    def layer_ids(self) -> dict[str, int]:
        """Every parameter's layer id (see ``_stage_layer_ids``); the feature norms on top."""
        norms = layer_ids_of("hidden_states_norms", self.hidden_states_norms, self.top_layer_id)
        return self._stage_layer_ids() | norms

    @property
    def stage_names(self) -> list[str]:
        return self.config.stage_names

    @property
    def out_features(self) -> list[str]:
        return self.config.out_features

    @property
    def out_indices(self) -> list[int]:
        return self.config.out_indices

    @property
    def channels(self) -> list[int]:
        """Channels of each feature map, in out_indices order."""
        return [self.num_features[i] for i in self.config.out_indices]

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BackboneOutput:
        _, before, attentions = self.forward_stages(pixel_values, output_attentions)
        maps = tuple(
            self.hidden_states_norms[name](state).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
            for name, state in zip(self.stage_names, before)
            if name in self.hidden_states_norms
        )
        return BackboneOutput(
            feature_maps=maps,
            hidden_states=tuple(before) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
