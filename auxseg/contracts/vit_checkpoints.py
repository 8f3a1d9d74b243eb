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

Some one-key losses leave the key set of another valid file: Meta's file without
``mask_token`` is timm's file of the same model, and a register model without its
register tokens has the key set of the model without registers (the position
embeddings have the same shape in Meta's and Hugging Face's layouts). What a file
states about itself therefore counts as well (:func:`stated_facts`): Meta's file
names (``dinov2_<arch>_pretrain.pth``) state the layout and the architecture, a
``reg<N>`` in a file name states N registers, and the ``config.json`` that Hugging
Face writes beside ``model.safetensors`` states the model type, the register count
and the sizes. Each statement must agree with the file. The register count is read
from the register key, from timm's position embeddings (no class position there for
register models) or from such a statement; when none of them gives it, the file could
be either model and ``extractor.arch`` must name it.

Files are read with ``torch.load(weights_only=True)`` (:func:`auxseg.checkpoint_io.load_checkpoint`)
or, for ``.safetensors``, with the safetensors package. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
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
    none of these is timm's (or Meta's without its mask token: :func:`read_vit_weights`
    lets Meta's file name decide). DINO v1 files have one layout, Meta's, which is timm's.
    """
    keys = set(keys)
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in keys):
        return "hf"
    if family == "dino":
        return "meta"
    if "mask_token" in keys or "register_tokens" in keys or any(".mlp.w12." in k for k in keys):
        return "meta"
    return "timm"


REGISTER_KEYS = {"hf": "embeddings.register_tokens", "meta": "register_tokens", "timm": "reg_token"}
META_NAME = re.compile(r"dinov2_(.+)_pretrain\.pth")
"""Meta's DINOv2 backbone files: ``dinov2_vits14_pretrain.pth``, ``dinov2_vits14_reg4_pretrain.pth``, ..."""
HF_CONFIG_FIELDS = {"hidden_size": "embed_dim", "num_hidden_layers": "depth", "num_attention_heads": "num_heads",
                    "patch_size": "patch_size", "use_swiglu_ffn": "swiglu"}
"""``config.json`` fields of Hugging Face's DINOv2 models -> the :class:`ViTSpec` field each one states."""


@dataclass(frozen=True)
class Fact:
    """Something a weights file states about itself through its name or a file beside it.

    ``field`` is "layout", "arch" or a :class:`ViTSpec` field ("registers", "embed_dim", ...);
    ``said`` is the statement as an error message quotes it.
    """

    field: str
    value: object
    said: str


def _name_facts(path: Path) -> list[Fact]:
    name, facts = path.name, []
    regs = [int(m.group(1)) for t in re.split(r"[_.-]", name) if (m := re.fullmatch(r"reg(\d+)", t))]
    if regs:
        facts.append(Fact("registers", regs[0], f"its name {name} says {regs[0]} registers (reg{regs[0]})"))
    meta = META_NAME.fullmatch(name)
    if meta:
        facts.append(Fact("layout", "meta", f"its name {name} is Meta's (dinov2_*_pretrain.pth)"))
        arch = meta.group(1)
        if arch in DINOV2_ARCHS:
            facts.append(Fact("arch", arch, f"its name {name} says {arch}"))
            facts.append(Fact("registers", DINOV2_ARCHS[arch].registers, f"its name {name} says {arch}"))
        elif not regs:  # Meta names register models ..._reg4_pretrain.pth
            facts.append(Fact("registers", 0, f"its name {name} (Meta's, without reg4) says no registers"))
    return facts


def _hf_config_facts(path: Path) -> list[Fact]:
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        return []
    where = f"{config_path} beside it"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the config.json beside it ({config_path}): "
                              f"{str(err).splitlines()[0]}") from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in ("dinov2", "dinov2_with_registers"):
        raise CheckpointError(f"{path}: {where} has model_type {model_type!r}, not a DINOv2 model "
                              "(dinov2 or dinov2_with_registers)")
    # transformers' Dinov2WithRegistersConfig defaults num_register_tokens to 4; Dinov2Config has none
    registers = config.get("num_register_tokens", 4) if model_type == "dinov2_with_registers" else 0
    if not isinstance(registers, int) or isinstance(registers, bool) or registers < 0:
        raise CheckpointError(f"{path}: {where} has num_register_tokens {registers!r}, not a count")
    facts = [Fact("registers", registers, f"{where} has model_type {model_type!r} ({registers} registers)")]
    facts += [Fact(attr, config[key], f"{where} has {key} {config[key]}") for key, attr in HF_CONFIG_FIELDS.items()
              if key in config]
    return facts


def stated_facts(path: str | Path, family: str, layout: str) -> list[Fact]:
    """What a DINOv2 weights file states about itself, besides its keys and shapes.

    Its name: Meta's ``dinov2_<arch>_pretrain.pth`` states Meta's layout and, for a known
    ``<arch>``, the architecture (otherwise the register count, by ``reg4`` or its absence);
    a ``reg<N>`` between ``_``, ``-`` or ``.`` in any name states N registers. For Hugging
    Face's layout, a ``config.json`` beside the file states the model type (with or without
    registers, and how many) and the sizes (:data:`HF_CONFIG_FIELDS`). DINO v1: nothing.
    Raises CheckpointError for a ``config.json`` that is unreadable or not a DINOv2 model's.
    """
    if family != "dinov2":
        return []
    path = Path(path)
    return _name_facts(path) + (_hf_config_facts(path) if layout == "hf" else [])


def _stated(facts: Sequence[Fact], field: str) -> Fact | None:
    return next((f for f in facts if f.field == field), None)


def _registers_of(state: dict, layout: str, facts: Sequence[Fact]) -> tuple[int | None, bool | None]:
    """``(count, has_registers)`` as far as the file tells: the register key's shape, timm's position
    embeddings (for register models without the class position: a square number of them), or a statement."""
    key = REGISTER_KEYS[layout]
    if key in state:
        return int(state[key].shape[1]), True
    stated = _stated(facts, "registers")
    if layout == "timm" and "pos_embed" in state:
        n = int(state["pos_embed"].shape[1])
        if math.isqrt(n) ** 2 != n:  # 1 + M*M positions: the class token has one
            return 0, False
        return (int(stated.value) if stated is not None and stated.value else None), True
    if stated is not None:
        return int(stated.value), int(stated.value) > 0
    return None, None


def infer_arch(state: dict, family: str, layout: str, path: str | Path, facts: Sequence[Fact] = ()) -> str:
    """The one name in ``ARCHS[family]`` whose embed dim, depth, registers, patch and MLP kind match the file.

    The register count comes from the file (:func:`_registers_of`) or from ``facts``
    (:func:`stated_facts`). Raises CheckpointError when no architecture fits, or more than one
    (a Meta or Hugging Face file without register tokens whose name and config.json say nothing:
    with or without registers; ``extractor.arch`` must then name it).
    """
    hf = layout == "hf"
    cls_key = "embeddings.cls_token" if hf else "cls_token"
    patch_key = "embeddings.patch_embeddings.projection.weight" if hf else "patch_embed.proj.weight"
    if cls_key not in state and patch_key not in state:  # e.g. Meta's dinov2_*_linear_head.pth
        raise CheckpointError(f"{path}: not a {family} backbone: it has neither {cls_key} nor {patch_key} "
                              f"({len(state)} tensors, e.g. {sorted(state)[:3]}; a linear head or another model?)")
    for key in (cls_key, patch_key):
        if key not in state:
            raise CheckpointError(f"{path}: cannot infer the {family} architecture ({layout} layout): no {key}; "
                                  "name it with extractor.arch")
    block_re = re.compile(r"encoder\.layer\.(\d+)\." if hf else r"blocks\.(\d+)\.")
    blocks = sorted({int(m.group(1)) for k in state if (m := block_re.match(k))})
    found = {
        "embed_dim": int(state[cls_key].shape[-1]),
        "depth": blocks[-1] + 1 if blocks else 0,
        "patch_size": int(state[patch_key].shape[-1]),
    }
    # the MLP of the first block that has both weights: SwiGLU's first projection is twice as wide as the
    # second one's input (timm's layout names both MLP kinds fc1 / fc2, so the shapes decide)
    for i in blocks:
        prefix = f"encoder.layer.{i}.mlp." if hf else f"blocks.{i}.mlp."
        first = next((state[prefix + n + ".weight"] for n in ("fc1", "w12", "weights_in")
                      if prefix + n + ".weight" in state), None)
        second = next((state[prefix + n + ".weight"] for n in ("fc2", "w3", "weights_out")
                       if prefix + n + ".weight" in state), None)
        if first is not None and second is not None and first.ndim == second.ndim == 2:
            found["swiglu"] = first.shape[0] == 2 * second.shape[1]
            found["mlp_hidden"] = int(second.shape[1])
            break
    registers, has_registers = _registers_of(state, layout, facts)
    if registers is not None:
        found["registers"] = registers
    fits = [name for name, spec in ARCHS[family].items()
            if all(getattr(spec, k) == v for k, v in found.items())
            and (has_registers is None or (spec.registers > 0) == has_registers)]
    if len(fits) == 1:
        return fits[0]
    shown = ", ".join(f"{k} {v}" for k, v in found.items())
    if not fits:
        raise CheckpointError(f"{path}: no known {family} architecture has {shown} ({layout} layout); "
                              f"known: {', '.join(ARCHS[family])}")
    if has_registers is None and len({ARCHS[family][n].registers for n in fits}) > 1:
        where = REGISTER_KEYS[layout] + (" or the length of pos_embed" if layout == "timm" else "")
        unstated = {"meta": "its name does not state it (as Meta's dinov2_<arch>_pretrain.pth or a reg<N> would)",
                    "hf": "no config.json beside it (save_pretrained writes one) or reg<N> in its name states it",
                    "timm": "no reg<N> in its name states it"}[layout]
        raise CheckpointError(f"{path}: fits {', '.join(fits)} ({layout} layout): the register count is read "
                              f"from {where}, which the file lacks, and {unstated}; "
                              "name the architecture with extractor.arch")
    raise CheckpointError(f"{path}: fits {', '.join(fits)} ({layout} layout, {shown}); "
                          "name the architecture with extractor.arch")


def check_facts(facts: Sequence[Fact], family: str, arch: str, layout: str, path: str | Path, inferred: bool) -> None:
    """Raise CheckpointError (one line) when something the file states (:func:`stated_facts`) contradicts
    the architecture it is read as."""
    spec = ARCHS[family][arch]
    how = "inferred from its keys and shapes" if inferred else "extractor.arch"
    for fact in facts:
        if fact.field == "layout":
            continue  # applied before the architecture is known
        actual = arch if fact.field == "arch" else getattr(spec, fact.field)
        if actual != fact.value:
            has = "" if fact.field == "arch" else f", which has {fact.field} {actual}"
            raise CheckpointError(f"{path}: {fact.said}, but the file reads as {family} {arch} "
                                  f"({layout} layout, {how}){has}")


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
        arch: a name of ``ARCHS[family]``; None: inferred from the file's shapes (and what its name and a
            Hugging Face ``config.json`` beside it state: :func:`stated_facts`).
    Raises:
        CheckpointError (one line, naming the file) for an unreadable file, an unknown or ambiguous
        architecture, a statement of the file's name or config.json that the file contradicts, any
        missing or unexpected key (named as the file names it), or a wrong shape.
    """
    if family not in ARCHS:
        raise ValueError(f"family {family!r} is not one of {sorted(ARCHS)}")
    path = Path(path)
    state = load_weights_file(path)
    layout = detect_layout(state, family)
    if family == "dino" and layout == "hf":
        raise CheckpointError(f"{path}: Hugging Face's layout is read for DINOv2 only; for DINO v1 use Meta's "
                              "dino_*_pretrain.pth")
    facts = stated_facts(path, family, layout)
    named_layout = _stated(facts, "layout")
    if named_layout is not None and layout != named_layout.value:
        if layout == "hf":
            raise CheckpointError(f"{path}: {named_layout.said}, but its keys are Hugging Face's (embeddings.*)")
        layout = named_layout.value  # Meta's file that lost its mask token: check it as Meta's, naming the key
    inferred = arch is None
    if inferred:
        arch = infer_arch(state, family, layout, path, facts)
    elif arch not in ARCHS[family]:
        raise CheckpointError(f"{path}: extractor.arch {arch!r} is not a {family} architecture; "
                              f"known: {', '.join(ARCHS[family])}")
    check_facts(facts, family, arch, layout, path, inferred)
    spec = ARCHS[family][arch]
    what = f"{family} {arch} ({layout} layout)"
    shapes = vit_shapes(spec, layout)
    check_keys(set(shapes), set(state), path, what)
    check_shapes(state, shapes, path, what)
    timm_state = to_timm_layout(state, spec, layout)
    assert set(timm_state) == set(vit_shapes(spec, "timm")), "layout conversion lost or invented keys"
    return ViTWeights(timm_state, arch, spec, layout)
