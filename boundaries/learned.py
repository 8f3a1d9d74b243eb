"""Boundaries from a network trained with the local-prediction objective (docs/boundaries.md, "predict").

From a network trained with the ``local_prediction`` objective: a small-model
export that carries its predictor (``small_model.pth``), or a ResNet's backbone
export with the ``local_predictor.pth`` written beside it
(:mod:`auxseg.contracts.small_model`; :func:`read_predicting_network` takes either file
or the run's folder), per image:

1. features of the image, standardised per channel over the image (the
   training standardised over the batch; no noise at prediction);
2. switch posteriors ``pi_{x,d}`` for every location and offset
   (:func:`auxseg.methods.local_prediction.posterior_maps`);
3. local boundary strength per location: the mean (or max) of ``1 - pi`` over
   the pairs that touch it (every offset ``d``; pairs leaving the map are left
   out), upsampled bilinearly to the image for strided networks;
4. optional spectral globalisation (gPb-style, related-methods C.7): on a
   graph of at most ``graph_side`` nodes per side (features average-pooled to
   that grid, posteriors recomputed there), the sparse affinity
   ``W_{x,x+d} = pi_{x,d}`` (+ a floor of 1e-3 that keeps the graph connected), the generalised eigenproblem ``(D - W) v = lambda D v``
   solved for ``n_vectors`` non-trivial eigenvectors with
   ``scipy.sparse.linalg.eigsh`` (on the normalised form), and
   ``sum_k |grad v_k| / sqrt(lambda_k)``, scaled to [0, 1], upsampled and mixed
   with the local map: ``(1 - weight) local + weight spectral``;
5. non-maximum suppression (``boundaries.evaluation``), then an 8-bit PNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F

from auxseg.checkpoint_io import CheckpointError
from auxseg.contracts.small_model import (
    LOCAL_PREDICTOR_FILENAME,
    LOCAL_PREDICTOR_FORMAT,
    SMALL_MODEL_FILENAME,
    SMALL_MODEL_FORMAT,
    SmallModelExport,
    check_predictor,
    read_small_model,
)
from auxseg.errors import AuxsegError
from auxseg.images import read_rgb, scan_images, write_label_png
from auxseg.methods.local_prediction import offsets, posterior_maps, standardise


@dataclass
class BoundaryOptions:
    reduce: str = "mean"  # "mean" or "max" of 1 - pi over the pairs touching a location
    globalize: bool = False  # add the spectral (gPb-style) boundary
    weight: float = 0.5  # share of the spectral map in the combination (choice)
    graph_side: int = 64  # the globalisation graph has at most this many nodes per side (choice)
    n_vectors: int = 8  # non-trivial eigenvectors (gPb uses 16 on full-size graphs; choice for the small graph)
    nms: bool = True  # thin the map with non-maximum suppression
    device: str = "cpu"


def local_boundary_map(pi: torch.Tensor, valid: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Boundary strength per location from its switch posteriors.

    Args:
        pi: ``[B, D, h, w]`` posteriors ``pi_{x,d}``.
        valid: ``[D, h, w]`` bool, where ``x + d`` is inside the map.
        reduce: "mean" or "max" of ``1 - pi`` over the valid offsets.
    Returns:
        ``[B, h, w]`` in [0, 1].
    """
    off = (1.0 - pi) * valid
    if reduce == "max":
        return off.amax(1)
    if reduce != "mean":
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return off.sum(1) / valid.sum(0).clamp_min(1)


def affinity_matrix(pi: np.ndarray, valid: np.ndarray, size: int, floor: float = 1e-3) -> sp.csr_matrix:
    """Sparse affinity ``W_{x, x+d} = pi_{x,d} + floor`` of one map (symmetric: ``d`` and ``-d`` share parameters).

    The ``floor`` (choice) keeps the graph connected: where the posteriors cut
    the map into many pieces (a texture that is "boundary" everywhere) the
    eigenproblem would otherwise have many eigenvalues at 0 and the solver
    would crawl.

    Args:
        pi: ``[D, h, w]`` posteriors; valid: ``[D, h, w]`` bool; size: the neighbourhood (D).
    Returns:
        ``[h*w, h*w]`` CSR matrix.
    """
    _, h, w = pi.shape
    idx = np.arange(h * w).reshape(h, w)
    rows, cols, vals = [], [], []
    for k, (dy, dx) in enumerate(offsets(size)):
        m = valid[k]
        rows.append(idx[m])
        cols.append(idx[m] + dy * w + dx)
        vals.append(pi[k][m] + floor)
    wmat = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(h * w, h * w))
    return (wmat + wmat.T) * 0.5  # exact symmetry against float rounding


def spectral_boundary(wmat: sp.csr_matrix, h: int, w: int, n_vectors: int = 8, seed: int = 0) -> np.ndarray:
    """``sum_k |grad v_k| / sqrt(lambda_k)`` over the smallest non-trivial solutions of ``(D - W) v = lambda D v``.

    Solved as the largest eigenpairs of ``D^-1/2 W D^-1/2`` (``mu = 1 - lambda``,
    ``v = D^-1/2 u``). Returns ``[h, w]`` scaled to max 1 (zeros when the graph is too small).
    """
    n = h * w
    k = min(n_vectors + 1, n - 2)
    if k < 2:
        return np.zeros((h, w))
    deg = np.asarray(wmat.sum(1)).ravel() + 1e-8
    d_half = sp.diags(1.0 / np.sqrt(deg))
    mu, u = spla.eigsh(d_half @ wmat @ d_half, k=k, which="LA", v0=np.random.default_rng(seed).random(n), tol=1e-6)
    order = np.argsort(-mu)[1:]  # drop the trivial mu = 1 (lambda = 0)
    out = np.zeros((h, w))
    for i in order:
        lam = max(1.0 - mu[i], 1e-6)
        v = (u[:, i] / np.sqrt(deg)).reshape(h, w)
        v = v / (np.linalg.norm(v) + 1e-12)
        gy, gx = np.gradient(v) if min(h, w) > 1 else (np.zeros_like(v), np.zeros_like(v))
        out += np.hypot(gy, gx) / math.sqrt(lam)
    return out / out.max() if out.max() > 0 else out


def read_predicting_network(path: str | Path) -> SmallModelExport:
    """The network and predictor of a ``local_prediction`` run, for boundaries.

    ``path``: a ``small_model.pth``, a ``local_predictor.pth`` (its ResNet backbone export is read from the
    same folder and rebuilt as the dilated ResNet it was trained as, at its output stride), or the pre-training
    output folder holding either. Errors name the file.
    """
    from auxseg.checkpoint_io import check_keys, load_checkpoint
    from auxseg.contracts.backbone import load_backbone_export
    from auxseg.nets.dilated_resnet import OUTPUT_STRIDES, DilatedResNet

    path = Path(path)
    if path.is_dir():
        found = [path / n for n in (SMALL_MODEL_FILENAME, LOCAL_PREDICTOR_FILENAME) if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"{path}: neither {SMALL_MODEL_FILENAME} nor {LOCAL_PREDICTOR_FILENAME} here; "
                                  "boundaries need a run of `auxseg pretrain` with loss.name=local_prediction")
        path = found[0]
    ckpt = load_checkpoint(path)
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != LOCAL_PREDICTOR_FORMAT:
        if fmt != SMALL_MODEL_FORMAT and path.name == LOCAL_PREDICTOR_FILENAME:
            raise CheckpointError(f"{path}: not a local-predictor file (format {fmt!r}, expected "
                                  f"{LOCAL_PREDICTOR_FORMAT!r})")
        export = read_small_model(path)
        if export.predictor is None:
            raise CheckpointError(f"{path}: this small model has no predictor parameters (it was not trained "
                                  "with loss.name=local_prediction); boundaries need them")
        return export
    meta = ckpt.get("meta")
    name = meta.get("backbone") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CheckpointError(f"{path}: meta.backbone must name the backbone export beside it, got {name!r}")
    if meta.get("stride", 8) not in OUTPUT_STRIDES:
        raise CheckpointError(f"{path}: meta.stride must be one of {OUTPUT_STRIDES}, got {meta.get('stride')!r}")
    backbone_file = path.parent / name
    if not backbone_file.is_file():
        raise CheckpointError(f"{path}: its backbone export {name} is not beside it")
    state, bmeta = load_backbone_export(backbone_file)
    if (bmeta["arch"], bmeta["stem"]) != (meta.get("arch"), meta.get("stem")):
        raise CheckpointError(f"{path}: written for {meta.get('arch')}/{meta.get('stem')}, but {backbone_file.name} "
                              f"is {bmeta['arch']}/{bmeta['stem']}")
    if meta.get("iteration") != bmeta.get("iteration"):
        raise CheckpointError(f"{path}: written at iteration {meta.get('iteration')}, but {backbone_file.name} at "
                              f"{bmeta.get('iteration')}: they come from different runs")
    model = DilatedResNet(bmeta["arch"], bmeta["stem"], meta.get("stride", 8))
    check_keys(model.state_dict().keys(), state.keys(), backbone_file, f"{bmeta['arch']} backbone")
    model.load_state_dict(state)
    check_predictor(ckpt.get("predictor"), model.out_channels, path)
    return SmallModelExport(model.eval(), ckpt["predictor"], {**meta, "mean": bmeta["mean"], "std": bmeta["std"]},
                            path)


def _predictor_tensors(export: SmallModelExport, device: torch.device):
    p = export.predictor
    return int(p["neighbourhood"]), p["logit_p"].to(device).float(), p["log_var"].to(device).float(), float(p["log_u"])


def _resize(x: np.ndarray | torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)[None, None]
    if tuple(t.shape[-2:]) != tuple(hw):
        t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    return t[0, 0]


@torch.no_grad()
def boundary_strength(export: SmallModelExport, rgb: np.ndarray, opts: BoundaryOptions | None = None) -> np.ndarray:
    """Boundary strength ``[H, W]`` float in [0, 1] of an RGB uint8 image ``[H, W, 3]`` (before NMS)."""
    opts = opts or BoundaryOptions()
    if export.predictor is None:
        raise CheckpointError(f"{export.path}: this small model has no predictor parameters (it was not trained "
                              "with loss.name=local_prediction); boundaries need them")
    device = torch.device(opts.device)
    size, logit_p, log_var, log_u = _predictor_tensors(export, device)
    model = export.model.to(device)
    mean = torch.tensor(export.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(export.std, device=device).view(1, 3, 1, 1)
    x = torch.tensor(np.asarray(rgb), device=device).permute(2, 0, 1)[None].float()  # a copy: rgb may be read-only
    f = standardise(model((x - mean) / std).float())  # [1, C, h, w]
    pi, valid = posterior_maps(f, size, logit_p, log_var, log_u)
    hw = rgb.shape[:2]
    local = _resize(local_boundary_map(pi, valid, opts.reduce)[0].cpu(), hw)
    if not opts.globalize:
        return local.clamp(0, 1).numpy()
    h, w = f.shape[-2:]
    scale = max(1, math.ceil(max(h, w) / opts.graph_side))
    g = F.adaptive_avg_pool2d(f, (math.ceil(h / scale), math.ceil(w / scale))) if scale > 1 else f
    gpi, gvalid = posterior_maps(g, size, logit_p, log_var, log_u)
    wmat = affinity_matrix(gpi[0].cpu().double().numpy(), gvalid.cpu().numpy(), size)
    spectral = _resize(spectral_boundary(wmat, *g.shape[-2:], n_vectors=opts.n_vectors), hw)
    return ((1 - opts.weight) * local + opts.weight * spectral).clamp(0, 1).numpy()


def predict_folder(checkpoint: str | Path, image_dir: str | Path, out_dir: str | Path,
                   opts: BoundaryOptions | None = None, progress: bool = True,
                   nms: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Path]:
    """Write ``out_dir/<rel>.png`` boundary maps for every image under ``image_dir``; returns the paths.

    The PNGs are uint8, 255 = strongest, as ``auxseg boundaries eval`` reads them. ``nms``: the
    non-maximum suppression (default :func:`boundaries.baselines.non_max_suppression`, the
    orientation estimated from the map itself).
    """
    from tqdm import tqdm

    from boundaries.baselines import non_max_suppression, to_uint8

    opts = opts or BoundaryOptions()
    export = read_predicting_network(checkpoint)
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: not a folder of images")
    images, problems = scan_images(image_dir)
    if problems:
        rel, why = next(iter(problems.items()))
        raise AuxsegError(f"cannot read image {image_dir / rel}: {why}")
    if not images:
        raise AuxsegError(f"{image_dir}: no images found")
    thin = (nms or non_max_suppression) if opts.nms else None
    written = []
    for rel in tqdm(images, desc="boundaries", disable=not progress, dynamic_ncols=True):
        strength = boundary_strength(export, read_rgb(image_dir / rel), opts)
        if thin is not None:
            strength = np.asarray(thin(strength), dtype=np.float64)
        path = out_dir / Path(rel).with_suffix(".png")
        write_label_png(path, to_uint8(strength))
        written.append(path)
    return written
