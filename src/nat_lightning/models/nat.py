"""NAT and DiNAT, top to bottom: helpers, attention, block, stage, model, heads.

Module names follow SHI-Labs' original code (``patch_embed``, ``levels.i.blocks.j.attn.qkv``),
so original checkpoints load as they are; transformers' names are mapped in checkpoints.py.
Feature maps are channels-last, ``(B, H, W, C)``, the layout neighborhood attention wants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import na2d
from .checkpoints import PretrainedMixin
from .config import NatConfig

_ACT = {"gelu": nn.GELU, "gelu_new": lambda: nn.GELU("tanh"), "gelu_pytorch_tanh": lambda: nn.GELU("tanh"),
        "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}


# -- outputs (attribute access like transformers' ModelOutput) -----------------------------------

@dataclass
class NatModelOutput:
    last_hidden_state: torch.Tensor  # (B, H, W, C) after the final norm
    pooler_output: torch.Tensor | None = None  # (B, C)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (B, H, W, C): embeddings, then each stage
    reshaped_hidden_states: tuple[torch.Tensor, ...] | None = None  # the same, (B, C, H, W)
    attentions: tuple[torch.Tensor, ...] | None = None  # per stage, last block: (B, heads, Hp, Wp, k*k)


@dataclass
class NatImageClassifierOutput:
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class BackboneOutput:
    feature_maps: tuple[torch.Tensor, ...]  # (B, C, H, W) per out_feature
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# -- helpers ---------------------------------------------------------------------------------------

class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class ConvTokenizer(nn.Module):
    """Two stride-2 3x3 convolutions: (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, config: NatConfig):
        super().__init__()
        dim = config.embed_dim
        self.proj = nn.Sequential(
            nn.Conv2d(config.num_channels, dim // 2, 3, stride=2, padding=1),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(dim)  # default eps, as transformers' NatEmbeddings

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(pixel_values).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """Halve the resolution and double the channels with a stride-2 3x3 convolution."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        # transformers builds this norm with LayerNorm's default eps, whatever the config says
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H/2, W/2, 2C)
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Mlp(nn.Module):
    def __init__(self, dim: int, config: NatConfig):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _ACT[config.hidden_act]()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


# -- attention, block, stage ---------------------------------------------------------------------

class NeighborhoodAttention2D(nn.Module):
    """Multi-head neighborhood attention with relative positional bias, on (B, H, W, C).

    Maps smaller than the dilated window are zero-padded at the bottom/right and cropped back,
    as in NATTEN's module and transformers; returned weights then cover the padded map.
    """

    def __init__(self, dim: int, num_heads: int, dilation: int, config: NatConfig):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.kernel_size, self.dilation = config.kernel_size, dilation
        self.backend = config.attention_backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * self.kernel_size - 1, 2 * self.kernel_size - 1))
        self.attn_drop = config.attention_probs_dropout_prob
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        batch, height, width, dim = x.shape
        window = self.kernel_size * self.dilation
        pad_h, pad_w = max(0, window - height), max(0, window - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        qkv = self.qkv(x).view(batch, height + pad_h, width + pad_w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(3)  # each (B, Hp, Wp, heads, head_dim)
        dropout = self.training and self.attn_drop > 0
        result = na2d(q, k, v, self.kernel_size, self.dilation, self.rpb, backend=self.backend,
                      return_weights=output_attentions or dropout)
        if output_attentions or dropout:  # rare paths: weights materialised, AV redone by hand
            out, weights = result
            if dropout:
                weights = F.dropout(weights, self.attn_drop, training=True)
                out = _apply_weights(weights, v, self.kernel_size, self.dilation)
        else:
            out, weights = result, None
        out = out.reshape(batch, height + pad_h, width + pad_w, dim)[:, :height, :width]
        return self.proj(out), weights


def _apply_weights(weights, value, kernel_size, dilation):
    """Weighted sum of window values for given weights (B, heads, H, W, k*k): the AV half of NA."""
    from ..ops.windows import window_index

    ih, _ = window_index(value.shape[1], kernel_size, dilation, value.device)
    iw, _ = window_index(value.shape[2], kernel_size, dilation, value.device)
    windows = value[:, ih[:, None, :, None], iw[None, :, None, :]].flatten(3, 4)  # (B, H, W, k*k, heads, D)
    return torch.einsum("bhijn,bijnhd->bijhd", weights, windows)


class NatBlock(nn.Module):
    """Pre-norm transformer block: x + NA(LN(x)), then x + MLP(LN(x)), each with layer scale."""

    def __init__(self, dim: int, num_heads: int, dilation: int, drop_path: float, config: NatConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = NeighborhoodAttention2D(dim, num_heads, dilation, config)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, config)
        self.layer_scale = config.layer_scale_init_value > 0
        if self.layer_scale:
            self.gamma1 = nn.Parameter(config.layer_scale_init_value * torch.ones(dim))
            self.gamma2 = nn.Parameter(config.layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        attn, weights = self.attn(self.norm1(x), output_attentions)
        mlp_in = x + self.drop_path(self.gamma1 * attn if self.layer_scale else attn)
        mlp = self.mlp(self.norm2(mlp_in))
        return mlp_in + self.drop_path(self.gamma2 * mlp if self.layer_scale else mlp), weights


class NatStage(nn.Module):
    """Blocks at one resolution, then (except the last stage) a downsampler."""

    def __init__(self, stage: int, drop_paths: list[float], config: NatConfig, downsample: bool):
        super().__init__()
        dim = config.embed_dim * 2**stage
        self.blocks = nn.ModuleList(
            NatBlock(dim, config.num_heads[stage], dilation, p, config)
            for dilation, p in zip(config.block_dilations(stage), drop_paths)
        )
        self.downsample = ConvDownsampler(dim, config.layer_norm_eps) if downsample else None

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        weights = None
        for block in self.blocks:
            x, weights = block(x, output_attentions)
        before = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, before, weights


# -- models --------------------------------------------------------------------------------------

class NatPreTrainedModel(PretrainedMixin, nn.Module):
    """Weight init as in transformers; loading and saving come from PretrainedMixin."""

    config: NatConfig

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, NeighborhoodAttention2D):
            nn.init.trunc_normal_(module.rpb, std=0.02)  # as the original code; transformers leaves zeros

    def init_weights(self) -> None:
        self.apply(self._init_weights)


class NatModel(NatPreTrainedModel):
    """The NAT/DiNAT encoder: tokenizer, stages, final norm, average pooling."""

    def __init__(self, config: NatConfig, add_final_norm: bool = True):
        super().__init__()
        self.config = config
        self.patch_embed = ConvTokenizer(config)
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        bounds = [sum(config.depths[:i]) for i in range(len(config.depths) + 1)]
        self.levels = nn.ModuleList(
            NatStage(i, rates[bounds[i] : bounds[i + 1]], config, downsample=i < len(config.depths) - 1)
            for i in range(len(config.depths))
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if add_final_norm else None
        self.init_weights()

    def encode(self, pixel_values: torch.Tensor, output_attentions: bool = False):
        """Embeddings, then every stage: states after and before downsampling, and attentions."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(f"pixel_values must be (batch, {self.config.num_channels}, height, width), "
                             f"got pixel_values.shape={tuple(pixel_values.shape)}")
        x = self.pos_drop(self.patch_embed(pixel_values))  # (B, H/4, W/4, C)
        after, before, attentions = [x], [x], []
        for level in self.levels:
            x, x_before, weights = level(x, output_attentions)
            after.append(x)
            before.append(x_before)
            attentions.append(weights)
        return after, before, attentions

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False,
                output_attentions: bool = False) -> NatModelOutput:
        after, _, attentions = self.encode(pixel_values, output_attentions)
        last = self.norm(after[-1])
        return NatModelOutput(
            last_hidden_state=last,
            pooler_output=last.mean(dim=(1, 2)),
            hidden_states=tuple(after) if output_hidden_states else None,
            reshaped_hidden_states=tuple(h.permute(0, 3, 1, 2) for h in after) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class NatForImageClassification(NatPreTrainedModel):
    """NatModel + a linear head on the pooled features."""

    def __init__(self, config: NatConfig):
        super().__init__()
        self.config = config
        self.nat = NatModel(config)
        self.head = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.head.apply(self._init_weights)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> NatImageClassifierOutput:
        out = self.nat(pixel_values, output_hidden_states, output_attentions)
        logits = self.head(out.pooler_output)
        return NatImageClassifierOutput(
            logits=logits,
            loss=None if labels is None else classification_loss(logits, labels),
            hidden_states=out.hidden_states,
            reshaped_hidden_states=out.reshaped_hidden_states,
            attentions=out.attentions,
        )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class ids (ignore_index -100) or soft targets (B, C); MSE if one output."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    if labels.is_floating_point() and labels.shape == logits.shape:
        return torch.sum(-labels * logits.log_softmax(-1), dim=-1).mean()
    return F.cross_entropy(logits, labels.view(-1), ignore_index=-100)


class NatBackbone(NatPreTrainedModel):
    """Multi-scale features for detection/segmentation: ``feature_maps`` in NCHW.

    Stages are taken before downsampling, each through its own LayerNorm, as transformers does.
    """

    def __init__(self, config: NatConfig):
        super().__init__()
        self.config = config
        self.nat = NatModel(config, add_final_norm=False)
        self.channels = [config.embed_dim] + [config.embed_dim * 2**i for i in range(len(config.depths))]
        self.out_norms = nn.ModuleDict({
            name: nn.LayerNorm(self.channels[config.stage_names.index(name)]) for name in config.out_features
        })

    @property
    def out_channels(self) -> list[int]:
        return [self.channels[i] for i in self.config.out_indices]

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False,
                output_attentions: bool = False) -> BackboneOutput:
        after, before, attentions = self.nat.encode(pixel_values, output_attentions)
        maps = tuple(
            self.out_norms[name](state).permute(0, 3, 1, 2).contiguous()
            for name, state in zip(self.config.stage_names, before) if name in self.out_norms
        )
        return BackboneOutput(
            feature_maps=maps,
            hidden_states=tuple(before) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
