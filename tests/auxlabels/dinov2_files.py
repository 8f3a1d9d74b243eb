"""DINOv2 weights written as Meta, timm and Hugging Face publish them, for the tests of the ViT extractors.

Written here from the names each project uses, not with the library's converter
(``auxseg.contracts.vit_checkpoints``), so a test that reads these files checks the
converter against a second route. Files are named as their publishers name them
(Meta: ``dinov2_<arch>_pretrain.pth``; Hugging Face: ``model.safetensors`` with the
``config.json`` that ``save_pretrained`` writes beside it), because the reader
cross-checks those names. Used by ``test_aux_dinov2.py`` and ``test_aux_camvid.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from auxseg.contracts.vit_checkpoints import ViTSpec

D, DEPTH, HEADS, GRID = 48, 3, 3, 16  # a tiny DINOv2: embed dim 48, 3 blocks, positions for 16 x 16 patches


def tiny_spec(registers: int = 0, swiglu: bool = False) -> ViTSpec:
    hidden = (int(D * 4 * 2 / 3) + 7) // 8 * 8 if swiglu else 4 * D
    return ViTSpec("dinov2", D, DEPTH, HEADS, 14, GRID, hidden, swiglu, registers, True)


def tiny_arch_name(registers: int = 0, swiglu: bool = False) -> str:
    return f"tiny_r{registers}{'_swiglu' if swiglu else ''}"


TINY_ARCHS = {tiny_arch_name(r, s): tiny_spec(r, s) for r in (0, 4) for s in (False, True)}
"""Tiny architectures a test registers in ``DINOV2_ARCHS`` (monkeypatch: the real ones are large)."""


def perturbed(state: dict, seed: int = 0) -> dict:
    """Random weights with every tensor perturbed (LayerScale != 1, biases != 0: q/k/v order matters)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def vits14_timm_state(registers: int = 0, random: bool = True) -> dict:
    """A DINOv2 ViT-S/14 state dict from timm's own model definition (``vit_small_patch14[_reg4]_dinov2``).

    ``random``: perturbed random weights; False: every tensor a zero expanded to its shape (one stored
    element each: a file of the whole key set is a few kB, for tests that only check keys and shapes).
    """
    import timm

    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    if not random:
        model = timm.create_model(name, pretrained=False, device="meta")
        return {k: torch.zeros(()).expand(v.shape) for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    return perturbed(timm.create_model(name, pretrained=False).state_dict())


def timm_to_meta(state: dict, registers: int, swiglu: bool, seed: int = 1) -> dict:
    """timm names -> Meta's: a mask token, ``register_tokens``, the class position un-folded, SwiGLU w12/w3."""
    g = torch.Generator().manual_seed(seed)
    d = state["cls_token"].shape[-1]
    out = {"mask_token": torch.randn(1, d, generator=g)}
    for k, v in state.items():
        if swiglu:
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out[k] = v
    if registers:
        out["register_tokens"] = out.pop("reg_token")
        cls_pos = 0.02 * torch.randn(1, 1, d, generator=g)  # any split of the folded class token is the same model
        out["cls_token"] = state["cls_token"] - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    return out


def meta_to_hf(state: dict, depth: int) -> dict:
    """Meta names -> Hugging Face's (as ``save_pretrained`` writes them): qkv split into query/key/value."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.mask_token": state["mask_token"],
           "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    if "register_tokens" in state:
        out["embeddings.register_tokens"] = state["register_tokens"]
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{p}"].chunk(3)
            out |= {f"{h}attention.attention.query.{p}": q, f"{h}attention.attention.key.{p}": k,
                    f"{h}attention.attention.value.{p}": v,
                    f"{h}attention.output.dense.{p}": state[f"{b}attn.proj.{p}"],
                    f"{h}norm1.{p}": state[f"{b}norm1.{p}"], f"{h}norm2.{p}": state[f"{b}norm2.{p}"]}
            if f"{b}mlp.w12.{p}" in state:
                out |= {f"{h}mlp.weights_in.{p}": state[f"{b}mlp.w12.{p}"],
                        f"{h}mlp.weights_out.{p}": state[f"{b}mlp.w3.{p}"]}
            else:
                out |= {f"{h}mlp.fc1.{p}": state[f"{b}mlp.fc1.{p}"], f"{h}mlp.fc2.{p}": state[f"{b}mlp.fc2.{p}"]}
        out[f"{h}layer_scale1.lambda1"] = state[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = state[f"{b}ls2.gamma"]
    return out


def hf_config(dim: int, depth: int, heads: int, registers: int, swiglu: bool, image_size: int) -> dict:
    """The fields of the ``config.json`` Hugging Face writes beside a DINOv2 ``model.safetensors`` (as on the
    Hub's ``facebook/dinov2-small`` and ``facebook/dinov2-with-registers-small``)."""
    cfg = {"architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
           "model_type": "dinov2_with_registers" if registers else "dinov2", "hidden_size": dim,
           "num_hidden_layers": depth, "num_attention_heads": heads, "patch_size": 14, "image_size": image_size,
           "mlp_ratio": 4, "use_swiglu_ffn": swiglu, "layerscale_value": 1.0}
    if registers:
        cfg["num_register_tokens"] = registers
    return cfg


def layout_names(arch: str) -> dict[str, str]:
    """The file name of each layout for ``arch``, as Meta, timm's Hub and Hugging Face's Hub name them."""
    return {"meta": f"dinov2_{arch}_pretrain.pth", "timm": f"{arch}_timm.pth", "hf": "hf/model.safetensors"}


def write_three_layouts(folder: Path, timm_state: dict, arch: str, spec: ViTSpec, safetensors: bool = True) -> dict:
    """The same weights as Meta's .pth, timm's .pth and Hugging Face's ``model.safetensors`` + ``config.json``.

    ``safetensors`` False: Hugging Face's older ``pytorch_model.bin`` (``torch.save``) instead, which keeps
    expanded tensors small.
    """
    meta = timm_to_meta(timm_state, spec.registers, spec.swiglu)
    names = layout_names(arch)
    if not safetensors:
        names["hf"] = "hf/pytorch_model.bin"
    paths = {layout: Path(folder) / name for layout, name in names.items()}
    paths["hf"].parent.mkdir(parents=True, exist_ok=True)
    torch.save(meta, paths["meta"])
    torch.save(timm_state, paths["timm"])
    hf = meta_to_hf(meta, spec.depth)
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in hf.items()}, str(paths["hf"]))
    else:
        torch.save(hf, paths["hf"])
    config = hf_config(spec.embed_dim, spec.depth, spec.num_heads, spec.registers, spec.swiglu,
                       spec.pos_grid * spec.patch_size)
    (paths["hf"].parent / "config.json").write_text(json.dumps(config, indent=2))
    return paths


def write_vits14_files(folder: Path, registers: int = 0) -> dict:
    """A random-weight DINOv2 ViT-S/14 (timm's own model definition as the source) in the three layouts."""
    from auxseg.contracts.vit_checkpoints import DINOV2_ARCHS

    arch = "vits14_reg4" if registers else "vits14"
    return write_three_layouts(folder, vits14_timm_state(registers), arch, DINOV2_ARCHS[arch])
