"""Foundation-model extractors on timm: ``dinov2`` (ViT-S/B/L/g 14, with or without 4 registers), ``dino``
(DINO v1 ViT-S/B 8 and 16) and ``timm`` (any timm model by name).

Weights come only from the user's file (``extractor.checkpoint``) or, by explicit
choice, from a seeded random initialisation: timm builds every model with
``pretrained=False`` and nothing is downloaded. DINOv2/DINO files are read by
:func:`auxseg.contracts.vit_checkpoints.read_vit_weights` (Meta's, timm's or
Hugging Face's key layout, detected and converted to timm's, key set and shapes
checked exactly); a ``timm`` file must be the state dict of that timm model
(its classifier may be absent).

Dense features of a ViT (docs/auxlabels.md, "Foundation-model extractors"):

1. the image is scaled by ``patch / token_stride`` (``token_stride`` null: the
   patch size, i.e. the image's own resolution), aspect ratio kept, and further
   down when its patch grid would exceed ``max_tokens`` (the memory bound);
2. it is **padded** (bottom and right, with the mean colour) to a multiple of
   the patch size -- never stretched;
3. the patch tokens of the chosen blocks (after the final LayerNorm, as DINOv2's
   ``get_intermediate_layers``) are reshaped to their grid ``[B, D, gh, gw]``
   and concatenated along D;
4. the part of the grid that covers the image (without the padding) is
   resampled bilinearly onto the grid, so the map covers exactly the image; the
   stage then resizes it to the working stride (``working_features``) for
   K-means, as for every extractor.

Position embeddings are resampled as the official DINOv2 / DINO code does
(:func:`interpolate_patch_pos`): bicubic with the 0.1 offset and no antialiasing
(DINOv2 without registers, DINO v1), bicubic to the grid size with antialiasing
(DINOv2 with registers). timm models of the ``timm`` extractor keep timm's own
resampling (bicubic, antialiased).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from auxseg.checkpoint_io import CheckpointError, check_keys
from auxseg.config import ConfigError
from auxseg.contracts.common import IMAGENET_MEAN, IMAGENET_STD
from auxseg.contracts.vit_checkpoints import ARCHS, ViTSpec, check_shapes, load_weights_file, read_vit_weights

from .config import ExtractorConfig
from .extractor_base import FeatureExtractor, register_extractor
from .extractor_base import require_checkpoint as _require_checkpoint

# ----------------------------------------------------------------------------- pure functions


def interpolate_patch_pos(pos: torch.Tensor, grid_hw: tuple[int, int], offset: float, antialias: bool) -> torch.Tensor:
    """Resample patch position embeddings stored for an M x M grid to a ``gh x gw`` grid, as the official
    DINOv2 / DINO code does (``interpolate_pos_encoding``).

    Args:
        pos: ``[1, M*M, D]`` patch position embeddings (no class position).
        grid_hw: ``(gh, gw)``, the patch grid of the image.
        offset: > 0: bicubic by the scale factors ``((gh + offset) / M, (gw + offset) / M)`` (the official
            0.1 "to avoid floating point error"); 0: bicubic to the size ``(gh, gw)``.
        antialias: antialiased bicubic (PyTorch's antialiased kernel differs from the plain one even when
            upsampling).
    Returns:
        ``[1, gh*gw, D]``; ``pos`` itself when the grid is M x M (the official shortcut).
    """
    m = math.isqrt(pos.shape[1])
    gh, gw = grid_hw
    if m * m != pos.shape[1]:
        raise ValueError(f"{pos.shape[1]} position embeddings are not a square grid")
    if (gh, gw) == (m, m):
        return pos
    grid = pos.float().reshape(1, m, m, -1).permute(0, 3, 1, 2)  # [1, D, M, M]
    if offset:
        out = F.interpolate(grid, scale_factor=((gh + offset) / m, (gw + offset) / m), mode="bicubic",
                            antialias=antialias)
    else:
        out = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=antialias)
    assert out.shape[-2:] == (gh, gw), (out.shape, grid_hw)
    return out.permute(0, 2, 3, 1).reshape(1, gh * gw, -1).to(pos.dtype)


def patch_input_size(size_hw: tuple[int, int], patch: int, token_stride: int, max_tokens: int) -> tuple[int, int]:
    """The size ``(h, w)`` an image of ``size_hw`` pixels is scaled to before padding to a patch multiple.

    Scale ``patch / token_stride`` (one factor for both sides: aspect kept, rounded to whole pixels),
    reduced until the padded grid ``ceil(h/patch) x ceil(w/patch)`` has at most ``max_tokens`` tokens.
    """
    height, width = size_hw
    scale = patch / token_stride
    while True:
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        tokens = math.ceil(h / patch) * math.ceil(w / patch)
        if tokens <= max_tokens or (h <= patch and w <= patch):
            return h, w
        scale *= min(0.99, math.sqrt(max_tokens / tokens))


def crop_to_valid(feats: torch.Tensor, valid_hw: tuple[float, float]) -> torch.Tensor:
    """Resample the part of a token map that covers the image (not its padding) onto the map's own grid.

    Args:
        feats: ``[B, C, gh, gw]`` token map of a padded image.
        valid_hw: the image's extent in tokens (``h / patch``, ``w / patch``; at most ``gh``, ``gw``).
    Returns:
        ``[B, C, gh, gw]`` whose cells tile the image exactly (bilinear, token centres as sample points).
    """
    b, _, gh, gw = feats.shape
    # output cell centres, in token units of the padded map (token k spans [k, k+1])
    ys = (torch.arange(gh, dtype=torch.float32) + 0.5) * (valid_hw[0] / gh)
    xs = (torch.arange(gw, dtype=torch.float32) + 0.5) * (valid_hw[1] / gw)
    gy, gx = torch.meshgrid(ys / gh * 2 - 1, xs / gw * 2 - 1, indexing="ij")  # grid_sample's [-1, 1] frame
    grid = torch.stack([gx, gy], dim=-1).to(feats.device, feats.dtype)  # [gh, gw, 2] as (x, y)
    return F.grid_sample(feats, grid.expand(b, gh, gw, 2), mode="bilinear", padding_mode="border",
                         align_corners=False)


def resolve_blocks(blocks: list[int], depth: int, key: str = "extractor.blocks") -> list[int]:
    """Block (or feature-level) indices, negatives counted from the end, sorted and unique; [] -> the last."""
    if not blocks:
        return [depth - 1]
    bad = [b for b in blocks if not -depth <= b < depth]
    if bad:
        raise ConfigError(f"{key}: {bad} out of range for a network with {depth} (0..{depth - 1} or "
                          f"-{depth}..-1)")
    return sorted({b % depth for b in blocks})


# ----------------------------------------------------------------------------- modules


class PatchGridInput(nn.Module):
    """Runs a patch-token network on any image size: scale, pad to a patch multiple, crop the padding out.

    ``net`` maps ``[B, 3, gh*p, gw*p]`` to a token map ``[B, C, gh, gw]``; this module maps
    ``[B, 3, H, W]`` (normalised) to ``[B, C, gh, gw]`` covering exactly the image (module docstring).
    """

    def __init__(self, net: nn.Module, patch: int, token_stride: int, max_tokens: int):
        super().__init__()
        self.net, self.patch, self.token_stride, self.max_tokens = net, patch, token_stride, max_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        h, w = patch_input_size(tuple(x.shape[-2:]), p, self.token_stride, self.max_tokens)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        gh, gw = math.ceil(h / p), math.ceil(w / p)
        x = F.pad(x, (0, gw * p - w, 0, gh * p - h))  # zero = the mean colour after normalisation
        feats = self.net(x)  # [B, C, gh, gw]
        if (gh * p, gw * p) != (h, w):
            feats = crop_to_valid(feats, (h / p, w / p))
        return feats


class DinoViTTokens(nn.Module):
    """A DINO-family ViT built from timm modules, returning the normalised patch tokens of chosen blocks.

    The forward pass is the official one (tokens = [class, registers, patches], the position
    embeddings resampled by :func:`interpolate_patch_pos` with the official settings), written
    here because timm resamples differently (bicubic with antialiasing for every model).
    ``interp_offset`` / ``interp_antialias`` hold those settings.
    """

    def __init__(self, vit: nn.Module, spec: ViTSpec, blocks: list[int]):
        super().__init__()
        self.vit, self.spec = vit, spec
        self.blocks = resolve_blocks(blocks, spec.depth)
        self.interp_offset, self.interp_antialias = spec.pos_interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, gh*p, gw*p]`` normalised -> ``[B, D * len(blocks), gh, gw]``."""
        vit, p, b = self.vit, self.spec.patch_size, x.shape[0]
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)  # [B, gh*gw, D]
        cls, pos = vit.cls_token, vit.pos_embed  # [1, 1, D], [1, (1 +) M*M, D]
        if not self.spec.registers:  # timm keeps the class position in pos_embed here; folded in cls_token otherwise
            cls, pos = cls + pos[:, :1], pos[:, 1:]
        tokens = tokens + interpolate_patch_pos(pos, (gh, gw), self.interp_offset, self.interp_antialias)
        prefix = [cls.expand(b, -1, -1)]
        if self.spec.registers:
            prefix.append(vit.reg_token.expand(b, -1, -1))
        h = torch.cat([*prefix, tokens], dim=1)  # [B, 1 + R + gh*gw, D]
        n_prefix, outs = 1 + self.spec.registers, []
        for i, block in enumerate(vit.blocks[: self.blocks[-1] + 1]):
            h = block(h)
            if i in self.blocks:
                outs.append(vit.norm(h[:, n_prefix:]))  # [B, gh*gw, D], LayerNorm is per token
        feats = torch.cat(outs, dim=-1)  # [B, gh*gw, D * n]
        return feats.transpose(1, 2).reshape(b, -1, gh, gw)


def build_timm_vit(spec: ViTSpec, device: str | torch.device | None = None) -> nn.Module:
    """timm's ``VisionTransformer`` for ``spec``, randomly initialised (its keys are ``vit_shapes(spec, "timm")``).

    Built from the class, never through ``timm.create_model(..., pretrained=True)``: no weights are fetched.
    """
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    hidden = 2 * spec.mlp_hidden if spec.swiglu else spec.mlp_hidden  # timm packs both SwiGLU branches in fc1
    extra = dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU) if spec.swiglu else {}
    return VisionTransformer(
        img_size=spec.pos_grid * spec.patch_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
        depth=spec.depth, num_heads=spec.num_heads,
        mlp_ratio=(hidden + 0.5) / spec.embed_dim,  # timm takes int(dim * ratio): exactly `hidden`
        init_values=1e-5 if spec.layerscale else None,  # without it timm builds no LayerScale parameters
        reg_tokens=spec.registers, no_embed_class=spec.registers > 0, num_classes=0, device=device, **extra)


# ----------------------------------------------------------------------------- dinov2 / dino


def _timm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("timm")
    except PackageNotFoundError:
        return None


def _check_vit_options(cfg: ExtractorConfig, name: str) -> None:
    if cfg.layer != ExtractorConfig.layer:
        raise ConfigError(f"extractor.layer: {name} has no named layers; choose its blocks with extractor.blocks")
    if cfg.config is not None:  # e.g. the segmenter's mmseg_config.py a pipeline template filled in
        raise ConfigError(f"extractor.config: {name} reads no model config ({cfg.config}); set it to null")


def build_dino_family(cfg: ExtractorConfig, family: str) -> FeatureExtractor:
    """A DINOv2 / DINO ViT from its checkpoint file (any accepted layout) or random weights."""
    _check_vit_options(cfg, cfg.name)
    path = _require_checkpoint(cfg)
    if path is None:
        if cfg.arch not in ARCHS[family]:
            raise ConfigError(f"extractor.arch: required with random_init for {cfg.name}, one of "
                              f"{', '.join(ARCHS[family])} (got {cfg.arch!r})")
        arch, layout, spec = cfg.arch, None, ARCHS[family][cfg.arch]
        vit = build_timm_vit(spec)
    else:
        if cfg.arch is not None and cfg.arch not in ARCHS[family]:
            raise ConfigError(f"extractor.arch: {cfg.arch!r} is not a {family} architecture; known: "
                              f"{', '.join(ARCHS[family])}")
        weights = read_vit_weights(path, family, cfg.arch)
        arch, layout, spec = weights.arch, weights.layout, weights.spec
        vit = build_timm_vit(spec)
        try:
            vit.load_state_dict(weights.state_dict, strict=True)  # keys and shapes already checked
        except RuntimeError as err:
            raise CheckpointError(f"{path}: {family} {arch} weights do not fit the model: "
                                  f"{str(err).splitlines()[-1].strip()}") from err
    tokens = DinoViTTokens(vit, spec, cfg.blocks)
    token_stride = cfg.token_stride or spec.patch_size
    offset, antialias = spec.pos_interpolation
    return FeatureExtractor(
        PatchGridInput(tokens, spec.patch_size, token_stride, cfg.max_tokens),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, stride=token_stride,
        description={"arch": f"{family}_{arch}", "layout": layout, "patch_size": spec.patch_size,
                     "embed_dim": spec.embed_dim, "depth": spec.depth, "registers": spec.registers,
                     "blocks": tokens.blocks, "token_stride": token_stride, "max_tokens": cfg.max_tokens,
                     "input": "scaled by patch/token_stride (aspect kept), padded to a patch multiple",
                     "pos_interpolation": f"bicubic, offset {offset}, antialias {antialias}",
                     "timm": _timm_version()},
    )


@register_extractor("dinov2", "DINOv2 ViT-S/B/L/g 14 (+ _reg4) file in Meta's, timm's or HF's layout "
                              "(arch: vits14..vitg14_reg4 or inferred; blocks: ViT blocks)")
def build_dinov2(cfg: ExtractorConfig) -> FeatureExtractor:
    """DINOv2 (Oquab et al. 2023; registers: Darcet et al. 2024) from ``dinov2_*_pretrain.pth``, a timm
    state dict or a Hugging Face ``model.safetensors``."""
    return build_dino_family(cfg, "dinov2")


@register_extractor("dino", "DINO v1 ViT-S/B 8 or 16 from Meta's dino_*_pretrain.pth (arch: vits8, vitb8, "
                            "vits16, vitb16 or inferred; blocks: ViT blocks)")
def build_dino(cfg: ExtractorConfig) -> FeatureExtractor:
    """DINO v1 (Caron et al. 2021) from Meta's backbone file (which is in timm's layout)."""
    return build_dino_family(cfg, "dino")


# ----------------------------------------------------------------------------- any timm model


class TimmIntermediates(nn.Module):
    """A timm model's ``forward_intermediates`` at chosen indices, resized to the finest one and concatenated.

    ViTs: patch-token maps of blocks, after the final norm; CNNs: feature levels as timm's ``feature_info``
    numbers them (ResNet: 0 stem, 1..4 layer1..layer4).
    """

    def __init__(self, model: nn.Module, indices: list[int], norm: bool):
        super().__init__()
        self.model, self.indices, self.norm = model, indices, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.model.forward_intermediates(x, indices=self.indices, norm=self.norm, stop_early=True,
                                                intermediates_only=True)  # list of [B, C_i, h_i, w_i]
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps]
        return torch.cat(maps, dim=1)


def _classifier_keys(model: nn.Module, keys: set[str]) -> set[str]:
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return {k for k in keys if any(k.startswith(h + ".") for h in heads)}


@register_extractor("timm", "any timm model (arch: its timm name) from a timm state_dict file "
                            "(blocks: ViT blocks or CNN feature levels)")
def build_timm(cfg: ExtractorConfig) -> FeatureExtractor:
    """Any timm model by name, built with ``pretrained=False``; weights from a timm state dict (``.pth`` or
    ``.safetensors``), the classifier optional; features from ``forward_intermediates``."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if not cfg.arch:
        raise ConfigError("extractor.arch: name the timm model for extractor.name=timm "
                          "(e.g. resnet50, convnext_tiny, vit_small_patch14_dinov2)")
    if not timm.is_model(cfg.arch):
        import difflib

        near = difflib.get_close_matches(cfg.arch, timm.list_models(), n=1)
        raise ConfigError(f"extractor.arch: {cfg.arch!r} is not a timm model"
                          + (f" (did you mean {near[0]!r}?)" if near else ""))
    _check_vit_options(cfg, "timm")
    path = _require_checkpoint(cfg)  # seeds the random initialisation below
    try:  # ViTs take any image size only when built with dynamic_img_size
        model = timm.create_model(cfg.arch, pretrained=False, dynamic_img_size=True)
    except TypeError:
        model = timm.create_model(cfg.arch, pretrained=False)
    if not hasattr(model, "forward_intermediates"):
        raise ConfigError(f"extractor.arch: timm model {cfg.arch!r} has no forward_intermediates")
    if path is not None:
        state = load_weights_file(path)
        own = model.state_dict()
        expected = set(own)
        head = _classifier_keys(model, expected)
        if not head & set(state):  # a file without the classifier is fine: the features do not use it
            expected -= head
        what = f"timm {cfg.arch}"
        check_keys(expected, set(state), path, what)
        check_shapes(state, {k: tuple(v.shape) for k, v in own.items() if k in expected}, path, what)
        # the model's own (random, unused) classifier fills the keys the file leaves out: the load stays strict
        try:
            model.load_state_dict({k: v for k, v in own.items() if k not in expected} | state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: {what} weights do not fit the model: "
                                  f"{str(err).splitlines()[-1].strip()}") from err
    is_vit = isinstance(model, VisionTransformer)
    levels = len(model.blocks) if is_vit else len(model.feature_info)
    indices = resolve_blocks(cfg.blocks, levels)
    body: nn.Module = TimmIntermediates(model, indices, norm=is_vit)
    desc = {"arch": cfg.arch, "timm": _timm_version(), "blocks": indices}
    token_stride = None  # CNNs: measured by FeatureExtractor
    if is_vit:
        patch = model.patch_embed.patch_size[0]
        token_stride = cfg.token_stride or patch
        body = PatchGridInput(body, patch, token_stride, cfg.max_tokens)
        desc |= {"patch_size": patch, "token_stride": token_stride, "max_tokens": cfg.max_tokens,
                 "pos_interpolation": "timm (bicubic, antialias)"}
    elif cfg.token_stride is not None:
        raise ConfigError(f"extractor.token_stride: {cfg.arch} is not a ViT (the image is used at its size)")
    pcfg = model.pretrained_cfg
    mean = tuple(255 * v for v in pcfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(255 * v for v in pcfg.get("std", (0.229, 0.224, 0.225)))
    return FeatureExtractor(body, mean=mean, std=std, description=desc, stride=token_stride)
