"""DINOv2 and DINO ViT checkpoints in their three key layouts, read into one (timm's) with exact checks.

The same DINOv2 weights are published in three incompatible layouts; a file's
layout is detected from its keys (:func:`detect_layout`):

- ``meta``: Meta's ``dinov2_vit*14[_reg4]_pretrain.pth`` (``blocks.N.attn.qkv``,
  ``blocks.N.ls1.gamma``, ``mask_token``, ``register_tokens``, ViT-g's SwiGLU
  ``blocks.N.mlp.w12`` / ``w3``); DINO v1's ``dino_*_pretrain.pth`` files have
  the same names without LayerScale and mask token (which is timm's layout too);
- ``timm``: timm's ``vit_*_patch14[_reg4]_dinov2`` state dict (``reg_token``;
  for register models the class position folded into ``cls_token`` and
  ``pos_embed`` holding the patch positions only; SwiGLU as ``mlp.fc1`` /
  ``mlp.fc2``);
- ``hf``: Hugging Face Transformers' ``Dinov2Model`` / ``Dinov2WithRegistersModel``
  as ``save_pretrained`` writes it and the Hub holds it (``embeddings.*``,
  ``encoder.layer.N.attention.attention.{query,key,value}``,
  ``layer_scale1.lambda1``, SwiGLU ``mlp.weights_in`` / ``weights_out``).

:func:`read_vit_weights` detects the layout, infers the architecture from the
shapes when none is named, compares the file's key set **exactly** with the
key set of that architecture in that layout (missing and unexpected keys are
named in the file's own vocabulary, so a file without ``blocks.3.ls1.gamma``
says so), checks every shape, and converts to timm's layout, the one the
extractor loads. Expected keys and shapes come from :func:`vit_shapes`, computed
from a :class:`ViTSpec`, so no reader needs the writer's model class.

Files are read with ``torch.load(weights_only=True)`` (:func:`auxseg.checkpoint_io.load_checkpoint`)
or, for ``.safetensors``, with the safetensors package. Nothing is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from auxseg.checkpoint_io import CheckpointError, check_keys, load_checkpoint, state_dict_of

LAYOUTS = ("meta", "timm", "hf")
"""The key layouts :func:`read_vit_weights` accepts (Hugging Face's only for DINOv2)."""


@dataclass(frozen=True)
class ViTSpec:
    """A DINO-family ViT: everything its key set, its shapes and its forward pass depend on.

    ``pos_grid`` is M, the side of the M x M patch grid the position embeddings are
    stored for (DINOv2: 518 px / 14 = 37; DINO v1: 224 px / patch). ``mlp_hidden``
    is the MLP's hidden width (SwiGLU: the width of each of its two branches, the
    input width of Meta's ``w3``).
    """

    family: str  # "dinov2" or "dino"
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    pos_grid: int
    mlp_hidden: int
    swiglu: bool = False
    registers: int = 0
    layerscale: bool = True

    @property
    def pos_interpolation(self) -> tuple[float, bool]:
        """``(offset, antialias)`` of the official code's bicubic resampling of the position embeddings.

        DINOv2 without registers and DINO v1 resample by the scale factor
        ``(grid + 0.1) / M`` without antialiasing; DINOv2 with registers resamples to
        the grid size with antialiasing (facebookresearch/dinov2 ``hub/backbones.py``:
        ``interpolate_offset=0.0, interpolate_antialias=True`` for the ``_reg`` models).
        """
        return (0.0, True) if self.registers else (0.1, False)


def _dinov2(dim: int, depth: int, heads: int, registers: int, swiglu: bool = False) -> ViTSpec:
    # ViT-g's SwiGLU keeps 2/3 of the 4x hidden width, rounded up to a multiple of 8 (4096 for dim 1536)
    hidden = (int(dim * 4 * 2 / 3) + 7) // 8 * 8 if swiglu else dim * 4
    return ViTSpec("dinov2", dim, depth, heads, 14, 37, hidden, swiglu, registers, True)


def _dino(dim: int, heads: int, patch: int) -> ViTSpec:
    return ViTSpec("dino", dim, 12, heads, patch, 224 // patch, dim * 4, False, 0, False)


DINOV2_ARCHS: dict[str, ViTSpec] = {
    "vits14": _dinov2(384, 12, 6, 0),
    "vitb14": _dinov2(768, 12, 12, 0),
    "vitl14": _dinov2(1024, 24, 16, 0),
    "vitg14": _dinov2(1536, 40, 24, 0, swiglu=True),
    "vits14_reg4": _dinov2(384, 12, 6, 4),
    "vitb14_reg4": _dinov2(768, 12, 12, 4),
    "vitl14_reg4": _dinov2(1024, 24, 16, 4),
    "vitg14_reg4": _dinov2(1536, 40, 24, 4, swiglu=True),
}
"""DINOv2 architectures (Oquab et al. 2023; registers: Darcet et al. 2024) by ``extractor.arch``."""

DINO_ARCHS: dict[str, ViTSpec] = {
    "vits8": _dino(384, 6, 8),
    "vitb8": _dino(768, 12, 8),
    "vits16": _dino(384, 6, 16),
    "vitb16": _dino(768, 12, 16),
}
"""DINO v1 architectures (Caron et al. 2021) by ``extractor.arch``."""

ARCHS: dict[str, dict[str, ViTSpec]] = {"dinov2": DINOV2_ARCHS, "dino": DINO_ARCHS}


# ----------------------------------------------------------------------------- key sets and shapes


def _block_shapes(spec: ViTSpec, layout: str) -> dict[str, tuple[int, ...]]:
    """Shapes of block 0's keys in ``layout``, relative to the block prefix."""
    d, h = spec.embed_dim, spec.mlp_hidden
    norm = {"weight": (d,), "bias": (d,)}
    out: dict[str, tuple[int, ...]] = {}
    if layout == "hf":
        out |= {f"norm1.{k}": s for k, s in norm.items()} | {f"norm2.{k}": s for k, s in norm.items()}
        for part in ("query", "key", "value"):
            out |= {f"attention.attention.{part}.weight": (d, d), f"attention.attention.{part}.bias": (d,)}
        out |= {"attention.output.dense.weight": (d, d), "attention.output.dense.bias": (d,)}
        if spec.layerscale:
            out |= {"layer_scale1.lambda1": (d,), "layer_scale2.lambda1": (d,)}
        fc1, fc2 = ("weights_in", "weights_out") if spec.swiglu else ("fc1", "fc2")
    else:
        out |= {f"norm1.{k}": s for k, s in norm.items()} | {f"norm2.{k}": s for k, s in norm.items()}
        out |= {"attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d),
                "attn.proj.bias": (d,)}
        if spec.layerscale:
            out |= {"ls1.gamma": (d,), "ls2.gamma": (d,)}
        fc1, fc2 = ("w12", "w3") if spec.swiglu and layout == "meta" else ("fc1", "fc2")
    h_in = 2 * h if spec.swiglu else h  # SwiGLU's first projection holds both branches
    out |= {f"mlp.{fc1}.weight": (h_in, d), f"mlp.{fc1}.bias": (h_in,), f"mlp.{fc2}.weight": (d, h),
            f"mlp.{fc2}.bias": (d,)}
    return out


def vit_shapes(spec: ViTSpec, layout: str) -> dict[str, tuple[int, ...]]:
    """Every key of ``spec``'s state dict in ``layout`` ("meta", "timm" or "hf") with its shape.

    The timm layout is the extractor's own model (``tests/auxlabels/test_aux_dinov2.py`` checks it
    against timm's ``VisionTransformer``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    d, p, m, r = spec.embed_dim, spec.patch_size, spec.pos_grid, spec.registers
    if layout == "hf":
        out = {"embeddings.cls_token": (1, 1, d), "embeddings.mask_token": (1, d),
               "embeddings.position_embeddings": (1, 1 + m * m, d),
               "embeddings.patch_embeddings.projection.weight": (d, 3, p, p),
               "embeddings.patch_embeddings.projection.bias": (d,),
               "layernorm.weight": (d,), "layernorm.bias": (d,)}
        if r:
            out["embeddings.register_tokens"] = (1, r, d)
        block = "encoder.layer.{}."
    else:
        # timm's register models keep no position for the prefix tokens (the class one is folded into cls_token)
        n_pos = m * m if (layout == "timm" and r) else 1 + m * m
        out = {"cls_token": (1, 1, d), "pos_embed": (1, n_pos, d), "patch_embed.proj.weight": (d, 3, p, p),
               "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,)}
        if layout == "meta" and spec.family == "dinov2":
            out["mask_token"] = (1, d)  # used by iBOT masking in training only; present in every Meta file
        if r:
            out["register_tokens" if layout == "meta" else "reg_token"] = (1, r, d)
        block = "blocks.{}."
    one_block = _block_shapes(spec, layout)
    for i in range(spec.depth):
        out |= {block.format(i) + k: s for k, s in one_block.items()}
    return out


# ----------------------------------------------------------------------------- layout detection


def detect_layout(keys, family: str = "dinov2") -> str:
    """The layout a key set is written in: "hf", "meta" or "timm" (see the module docstring).

    Hugging Face's keys start with ``embeddings.`` / ``encoder.layer.``; Meta's DINOv2
    files carry ``mask_token`` (and ``register_tokens``, ``mlp.w12``); a file with
    none of these is timm's. DINO v1 files have one layout, Meta's, which is timm's.
    """
    keys = set(keys)
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in keys):
        return "hf"
    if family == "dino":
        return "meta"
    if "mask_token" in keys or "register_tokens" in keys or any(".mlp.w12." in k for k in keys):
        return "meta"
    return "timm"


def infer_arch(state: dict, family: str, layout: str, path: str | Path) -> str:
    """The name in ``ARCHS[family]`` whose embed dim, depth, registers, patch and MLP kind match the file."""
    hf = layout == "hf"
    cls_key = "embeddings.cls_token" if hf else "cls_token"
    patch_key = "embeddings.patch_embeddings.projection.weight" if hf else "patch_embed.proj.weight"
    reg_key = {"hf": "embeddings.register_tokens", "meta": "register_tokens", "timm": "reg_token"}[layout]
    for key in (cls_key, patch_key):
        if key not in state:
            raise CheckpointError(f"{path}: cannot infer the {family} architecture ({layout} layout): no {key}; "
                                  "name it with extractor.arch")
    block_re = re.compile(r"encoder\.layer\.(\d+)\." if hf else r"blocks\.(\d+)\.")
    blocks = {int(m.group(1)) for k in state if (m := block_re.match(k))}
    found = {
        "embed_dim": int(state[cls_key].shape[-1]),
        "depth": max(blocks) + 1 if blocks else 0,
        "registers": int(state[reg_key].shape[1]) if reg_key in state else 0,
        "patch_size": int(state[patch_key].shape[-1]),
    }
    # the MLP of the first block: SwiGLU's first projection is twice as wide as the second one's input
    # (timm's layout names both MLP kinds fc1 / fc2, so the shapes decide)
    prefix = "encoder.layer.0.mlp." if hf else "blocks.0.mlp."
    first = next((state[prefix + n + ".weight"] for n in ("fc1", "w12", "weights_in") if prefix + n + ".weight" in state),
                 None)
    second = next((state[prefix + n + ".weight"] for n in ("fc2", "w3", "weights_out")
                   if prefix + n + ".weight" in state), None)
    if first is not None and second is not None and first.ndim == second.ndim == 2:
        found["swiglu"] = first.shape[0] == 2 * second.shape[1]
        found["mlp_hidden"] = int(second.shape[1])
    for name, spec in ARCHS[family].items():
        if all(getattr(spec, k) == v for k, v in found.items()):
            return name
    shown = ", ".join(f"{k} {v}" for k, v in found.items())
    raise CheckpointError(f"{path}: no known {family} architecture has {shown} ({layout} layout); "
                          f"known: {', '.join(ARCHS[family])}")


# ----------------------------------------------------------------------------- conversion


def _hf_to_meta(state: dict, spec: ViTSpec) -> dict:
    """Hugging Face names -> Meta names (query/key/value concatenated into qkv, in that order)."""
    out = {"cls_token": state["embeddings.cls_token"], "mask_token": state["embeddings.mask_token"],
           "pos_embed": state["embeddings.position_embeddings"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    if spec.registers:
        out["register_tokens"] = state["embeddings.register_tokens"]
    fc1, fc2 = ("w12", "w3") if spec.swiglu else ("fc1", "fc2")
    hf_fc1, hf_fc2 = ("weights_in", "weights_out") if spec.swiglu else ("fc1", "fc2")
    for i in range(spec.depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}norm1.{p}"] = state[f"{src}norm1.{p}"]
            out[f"{dst}norm2.{p}"] = state[f"{src}norm2.{p}"]
            out[f"{dst}attn.qkv.{p}"] = torch.cat(
                [state[f"{src}attention.attention.{part}.{p}"] for part in ("query", "key", "value")])
            out[f"{dst}attn.proj.{p}"] = state[f"{src}attention.output.dense.{p}"]
            out[f"{dst}mlp.{fc1}.{p}"] = state[f"{src}mlp.{hf_fc1}.{p}"]
            out[f"{dst}mlp.{fc2}.{p}"] = state[f"{src}mlp.{hf_fc2}.{p}"]
        if spec.layerscale:
            out[f"{dst}ls1.gamma"] = state[f"{src}layer_scale1.lambda1"]
            out[f"{dst}ls2.gamma"] = state[f"{src}layer_scale2.lambda1"]
    return out


def _meta_to_timm(state: dict, spec: ViTSpec) -> dict:
    """Meta names -> timm names: mask token dropped, registers renamed, the class position folded into the
    class token for register models (timm keeps no position for prefix tokens there), SwiGLU renamed."""
    out = {}
    for k, v in state.items():
        if k == "mask_token":
            continue
        out[re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k))] = v
    if spec.registers:
        pos = out.pop("pos_embed")  # [1, 1 + M*M, D]
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]  # the class token only ever sees its position added
        out["pos_embed"] = pos[:, 1:]
    return out


def to_timm_layout(state: dict, spec: ViTSpec, layout: str) -> dict:
    """A state dict of ``spec`` in ``layout`` (keys already checked) -> the same weights in timm's layout."""
    if layout == "hf":
        state = _hf_to_meta(state, spec)
        layout = "meta"
    return _meta_to_timm(state, spec) if layout == "meta" else dict(state)


# ----------------------------------------------------------------------------- files


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors`` with the safetensors package, anything else with
    ``torch.load(weights_only=True)`` (its ``state_dict`` / ``model`` entry when it has one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(10)
    if path.suffix == ".safetensors" or head[8:10] == b'{"':  # 8-byte header length, then the JSON header
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read safetensors file {path}: {str(err).splitlines()[0]}") from err
    return state_dict_of(load_checkpoint(path), path)


@dataclass
class ViTWeights:
    """What :func:`read_vit_weights` returns: the weights in timm's layout and what the file was."""

    state_dict: dict[str, torch.Tensor]
    arch: str
    spec: ViTSpec
    layout: str  # the file's own layout: "meta", "timm" or "hf"


def check_shapes(state: dict, shapes: dict[str, tuple[int, ...]], path: str | Path, what: str) -> None:
    """Raise :class:`CheckpointError` naming the file and the first keys whose shapes differ."""
    bad = [f"{k} {tuple(state[k].shape)} (expected {s})" for k, s in shapes.items() if tuple(state[k].shape) != s]
    if bad:
        more = f" ... ({len(bad)} in all)" if len(bad) > 3 else ""
        raise CheckpointError(f"{path}: {what} shapes do not match: {', '.join(bad[:3])}{more}")


def read_vit_weights(path: str | Path, family: str, arch: str | None = None) -> ViTWeights:
    """Read a DINOv2 / DINO checkpoint in any accepted layout into timm's layout, exactly checked.

    Args:
        path: a ``.pth`` / ``.pt`` (weights_only) or ``.safetensors`` file.
        family: "dinov2" or "dino".
        arch: a name of ``ARCHS[family]``; None: inferred from the file's shapes.
    Raises:
        CheckpointError (one line, naming the file) for an unreadable file, an unknown
        architecture, any missing or unexpected key (named as the file names it), or a wrong shape.
    """
    if family not in ARCHS:
        raise ValueError(f"family {family!r} is not one of {sorted(ARCHS)}")
    path = Path(path)
    state = load_weights_file(path)
    layout = detect_layout(state, family)
    if family == "dino" and layout == "hf":
        raise CheckpointError(f"{path}: Hugging Face's layout is read for DINOv2 only; for DINO v1 use Meta's "
                              "dino_*_pretrain.pth")
    if arch is None:
        arch = infer_arch(state, family, layout, path)
    elif arch not in ARCHS[family]:
        raise CheckpointError(f"{path}: extractor.arch {arch!r} is not a {family} architecture; "
                              f"known: {', '.join(ARCHS[family])}")
    spec = ARCHS[family][arch]
    what = f"{family} {arch} ({layout} layout)"
    shapes = vit_shapes(spec, layout)
    check_keys(set(shapes), set(state), path, what)
    check_shapes(state, shapes, path, what)
    timm_state = to_timm_layout(state, spec, layout)
    assert set(timm_state) == set(vit_shapes(spec, "timm")), "layout conversion lost or invented keys"
    return ViTWeights(timm_state, arch, spec, layout)
