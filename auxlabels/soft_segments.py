"""Semantic soft segments (Aksoy, Oh, Paris, Pollefeys, Matusik, SIGGRAPH 2018) of one image.

The pipeline of docs/related-methods.md B.5 (official MATLAB code
``SemanticSoftSegmentation.m``), at a reduced working resolution:

1. **graph** -- ``W = W_matting + 0.01 W_semantic + 0.01 W_colour`` and ``L = D - W``:
   the matting affinity (:mod:`.matting`), a signed semantic affinity between
   *adjacent* superpixels from their mean semantic features, and a non-local
   colour affinity between superpixels whose centroids are within 0.2 of the
   (normalised) image size; both superpixel affinities sit between the two
   superpixels' centroid pixels, as in the official code.
2. **eigenvectors** -- the ``E`` eigenvectors of ``L`` of smallest magnitude
   (``eigsh`` in shift-invert mode around a small negative shift).
3. **constrained sparsification** -- spectral-matting iterative reweighted
   least squares on the eigenvector subspace: ``K0`` layers that sum to one,
   initialised by k-means on the semantic features, sparsity exponent 0.8,
   near-empty layers pruned.
4. **grouping** -- k-means on the layers' mean semantic features; layers of a
   group are summed.
5. **relaxed sparsification** -- Laplacian smoothness + per-pixel sparsity +
   fidelity to the grouped layers + a sum-to-one penalty, by conjugate
   gradients.

:func:`soft_segments` does steps 1-5 at the resolution it is given;
:func:`soft_segments_of_image` resizes an image to the working resolution,
runs them and upsamples the layers back (bilinear, clipped and renormalised).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from scipy.special import erf

from auxseg.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Seed, ranged

from .matting import laplacian, matting_affinity
from .superpixels import compute_superpixels

DEMO_PIXELS = 320 * 320
"""Pixels of the official demo image (``docia.png`` halved) that 2,500 superpixels were chosen for."""
DEMO_SUPERPIXELS = 2500
ZERO_ONE_WEIGHTS = (0.3, 0.3)
"""``(w0, w1)``: weights of the constrained sparsification's two sparsity terms (official ``softSegmentsFromEigs``)."""
RELAXED_WEIGHTS = (1.0, 1.0, 100.0)
"""``(sigma_s, sigma_f, delta)``: the relaxed sparsification's sparsity, fidelity and sum-to-one weights
(official ``sparsifySegments``)."""


@dataclass
class SoftSegmentsParams:
    """Parameters of the soft segmentation; defaults are the official code's unless marked (choice)."""

    working_side: ranged(int, ge=8) = 160  # longer image side (px) the graph is built at (choice: CPU cost, see docs)
    segments: ranged(int, ge=2, le=255) = 5  # soft segments per image after grouping (official groupSegments: 5)
    matting_eps: PositiveFloat = 1e-7  # matting covariance regulariser (divided by 9 inside)
    superpixels: ranged(int, ge=2) | None = None  # null: 2500 scaled by working pixels / 320^2 (official: 2500 at ~320x320)
    superpixel_method: Literal["fast_slic", "skimage"] = "fast_slic"  # (official: MATLAB SLIC)
    superpixel_compactness: PositiveFloat = 1.0  # (choice) low, as the official compactness 1e-20 (colour-driven)
    semantic_weight: NonNegativeFloat = 0.01
    semantic_steepness: PositiveFloat = 20.0  # erf(20 ((1 - |f_s - f_t|) - 0.85)), in [-1, 1]
    semantic_center: Fraction = 0.85
    colour_weight: NonNegativeFloat = 0.01
    colour_steepness: PositiveFloat = 50.0  # (erf(50 ((1 - |c_s - c_t|) - 0.95)) + 1) / 2, in [0, 1]
    colour_center: Fraction = 0.95
    colour_radius: NonNegativeFloat = 0.2  # centroid distance (normalised by H and W) within which colour affinities exist
    eigenvectors: ranged(int, ge=2) = 50  # smallest eigenvectors of L (choice; official: 100, twice the CPU time)
    eig_shift: ranged(float, lt=0) = -1e-5  # eigsh shift-invert point (below 0: L - shift I is invertible)
    initial_layers: ranged(int, ge=2) = 40  # layers of the constrained sparsification (official: 40)
    initial_iterations: PositiveInt = 40  # IRLS iterations (official: 40)
    sparsity: ranged(float, gt=0, lt=2) = 0.8  # sparsity exponent of the constrained sparsification (official: 0.8)
    prune_below: NonNegativeFloat = 0.1  # layers whose max |value| is below this are dropped every ceil(iters/4) iterations
    final_outer_iterations: NonNegativeInt = 20  # relaxed sparsification: re-weightings (official: 20)
    final_cg_iterations: PositiveInt = 100  # CG iterations per re-weighting (official: 100)
    final_polish_iterations: NonNegativeInt = 1000  # CG iterations of the last solve without sparsity (official: 1000)
    seed: Seed = 0  # k-means seeds (initialisation and grouping)


@dataclass
class SoftSegmentsResult:
    """Layers ``[K, H, W]`` (non-negative, sum to one per pixel) and what it took to make them."""

    layers: np.ndarray
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ superpixels

@dataclass
class SuperpixelGraph:
    """Superpixels of one image: labels ``[H, W]``, adjacent pairs ``[P, 2]`` (s < t), centroid pixels ``[S]``."""

    labels: np.ndarray
    count: int
    pairs: np.ndarray
    centroid_yx: np.ndarray  # float [S, 2], mean (y, x) of each superpixel
    centroid_index: np.ndarray  # int [S], flat index of the pixel nearest the centroid (y * W + x)

    def means(self, values: np.ndarray) -> np.ndarray:
        """Mean of per-pixel ``values [H, W, C]`` inside each superpixel: ``[S, C]``."""
        flat = self.labels.ravel()
        c = values.shape[-1]
        sums = np.stack([np.bincount(flat, values[..., i].ravel(), self.count) for i in range(c)], axis=1)
        return sums / np.maximum(np.bincount(flat, minlength=self.count), 1)[:, None]


def superpixel_graph(labels: np.ndarray) -> SuperpixelGraph:
    """Adjacency and centroids of a superpixel label map ``[H, W]`` with ids ``0..S-1``.

    Two superpixels are adjacent when any of their pixels are 8-neighbours (the default
    connectivity of the image-graph toolbox's ``adjacentRegionsGraph`` that the official code calls).
    """
    h, w = labels.shape
    s = int(labels.max()) + 1
    # right, down, down-right and down-left neighbours: every 8-neighbour pair once
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel(), labels[:-1, :-1].ravel(),
                        labels[:-1, 1:].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel(), labels[1:, 1:].ravel(),
                        labels[1:, :-1].ravel()])
    diff = a != b
    lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
    pairs = np.unique(np.stack([lo, hi], axis=1).astype(np.int64), axis=0) if diff.any() else np.zeros((0, 2), np.int64)
    ys, xs = np.mgrid[0:h, 0:w]
    counts = np.maximum(np.bincount(labels.ravel(), minlength=s), 1)
    cy = np.bincount(labels.ravel(), ys.ravel(), s) / counts
    cx = np.bincount(labels.ravel(), xs.ravel(), s) / counts
    iy = np.clip(np.rint(cy).astype(np.int64), 0, h - 1)
    ix = np.clip(np.rint(cx).astype(np.int64), 0, w - 1)
    return SuperpixelGraph(labels, s, pairs, np.stack([cy, cx], axis=1), iy * w + ix)


def default_superpixel_count(h: int, w: int) -> int:
    """The official 2,500 superpixels at ~320x320 pixels, scaled to ``h x w`` (at least 2)."""
    return max(2, round(DEMO_SUPERPIXELS * h * w / DEMO_PIXELS))


def semantic_affinity(graph: SuperpixelGraph, features: np.ndarray, steepness: float = 20.0,
                      center: float = 0.85) -> sp.csr_matrix:
    """Signed semantic affinity between adjacent superpixels, placed between their centroid pixels.

    ``a_st = erf(steepness ((1 - ||f_s - f_t||) - center))`` in [-1, 1] with ``f`` the mean
    semantic feature ``[H, W, 3]`` in [0, 1] of each superpixel (official ``neighborAffinities``).
    Returns a symmetric CSR ``[H*W, H*W]``.
    """
    n = graph.labels.size
    f = graph.means(features)
    s, t = graph.pairs[:, 0], graph.pairs[:, 1]
    a = erf(steepness * ((1.0 - np.linalg.norm(f[s] - f[t], axis=1)) - center))
    return _between_centroids(graph, s, t, a, n)


def colour_affinity(graph: SuperpixelGraph, image: np.ndarray, steepness: float = 50.0, center: float = 0.95,
                    radius: float = 0.2) -> sp.csr_matrix:
    """Non-local colour affinity between superpixels whose normalised centroids are within ``radius``.

    ``a_st = (erf(steepness ((1 - ||c_s - c_t||) - center)) + 1) / 2`` in [0, 1] with ``c`` the
    mean RGB in [0, 1]; centroids are divided by (H, W) before the distance (official
    ``nearbyAffinities``). Returns a symmetric CSR ``[H*W, H*W]``.
    """
    h, w = graph.labels.shape
    c = graph.means(image)
    cent = graph.centroid_yx / np.array([h, w], dtype=np.float64)
    from scipy.spatial import cKDTree

    pairs = cKDTree(cent).query_pairs(radius, output_type="ndarray")  # [P, 2], s < t
    if len(pairs) == 0:
        return sp.csr_matrix((h * w, h * w))
    s, t = pairs[:, 0], pairs[:, 1]
    a = (erf(steepness * ((1.0 - np.linalg.norm(c[s] - c[t], axis=1)) - center)) + 1.0) / 2.0
    return _between_centroids(graph, s, t, a, h * w)


def _between_centroids(graph: SuperpixelGraph, s: np.ndarray, t: np.ndarray, a: np.ndarray, n: int) -> sp.csr_matrix:
    """``W + W^T`` of affinities ``a`` between the centroid pixels of superpixels ``s`` and ``t``."""
    i, j = graph.centroid_index[s], graph.centroid_index[t]
    W = sp.coo_matrix((a, (i, j)), shape=(n, n)).tocsr()
    return (W + W.T).tocsr()


# ---------------------------------------------------------------------------------------------------- stages

def smallest_eigenvectors(L: sp.spmatrix, count: int, shift: float = -1e-5) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` eigenpairs of a symmetric sparse ``L`` nearest ``shift`` (just below 0): smallest magnitude.

    ARPACK Lanczos in shift-invert mode (``eigsh(sigma=shift)``): one sparse LU of
    ``L - shift I`` and then only triangular solves, which converges in few iterations for
    the clustered small eigenvalues of a matting Laplacian where plain ``which="SM"`` or
    LOBPCG without a good preconditioner take thousands. The shift is negative because ``L``
    is singular (``L 1 = 0``). Returns eigenvalues ``[E]`` ascending and eigenvectors ``[N, E]``.
    """
    n = L.shape[0]
    count = max(1, min(count, n - 2))
    v0 = np.ones(n) / np.sqrt(n)  # deterministic start
    shifted = sp.csc_matrix(L - shift * sp.eye(n))
    # symmetric ordering without pivoting: about 1/3 less fill-in and 3x faster than eigsh's own splu (COLAMD)
    lu = sla.splu(shifted, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    op_inv = sla.LinearOperator((n, n), matvec=lu.solve, dtype=np.float64)
    vals, vecs = sla.eigsh(sp.csc_matrix(L), k=count, sigma=shift, which="LM", v0=v0, OPinv=op_inv)
    order = np.argsort(vals)
    return vals[order], vecs[:, order]


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 3) -> np.ndarray:
    """Cluster ids ``[N]`` of rows ``x [N, D]`` with at most ``k`` clusters (fewer when x has fewer distinct rows)."""
    from sklearn.cluster import KMeans

    distinct = len(np.unique(np.round(x, 6), axis=0))
    k = max(1, min(k, distinct))
    if k == 1:
        return np.zeros(len(x), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-duplicate rows: sklearn warns about fewer distinct clusters
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x).astype(np.int64)


def constrained_sparsification(vecs: np.ndarray, vals: np.ndarray, L: sp.spmatrix, init: np.ndarray,
                               iterations: int = 40, sparsity: float = 0.8, prune_below: float = 0.1) -> np.ndarray:
    """Spectral-matting layers in the eigenvector subspace that sum to one (official ``softSegmentsFromEigs``).

    Minimises ``sum_k sum_p |a_kp|^s + |1 - a_kp|^s`` (weights ``w0, w1``: :data:`ZERO_ONE_WEIGHTS`) plus
    ``y_k^T Lambda y_k``
    over layers ``a_k = V y_k`` (k < K) and ``a_K = 1 - sum a_k``, by iteratively reweighted
    least squares (Levin et al., Spectral Matting, Eq. 9).

    Args:
        vecs: eigenvectors ``[N, E]``; vals: eigenvalues ``[E]``; L: the Laplacian ``[N, N]``.
        init: initial hard assignment ``[N]`` with ids ``0..K-1``.
        iterations: IRLS iterations; layers whose max |value| is below ``prune_below`` are
            dropped after every ``ceil(iterations / 4)`` iterations.
    Returns:
        layers ``[N, K']`` (K' <= K after pruning), summing to one per pixel (may leave [0, 1]).
    """
    n, e = vecs.shape
    w0, w1 = ZERO_ONE_WEIGHTS
    k_count = int(init.max()) + 1
    layers = (init[:, None] == np.arange(k_count)[None]).astype(np.float64)  # [N, K]
    lam = np.diag(vals)
    thr = 1e-10
    t_base = vecs.T @ (L @ np.ones(n))  # V^T L 1 (zero for an exact Laplacian; kept as in Eq. 9)
    remove_at = remove_cycle = int(np.ceil(iterations / 4))

    def weights(a):  # second derivatives of the two sparsity terms
        e1 = w1 ** sparsity * np.maximum(np.abs(a - 1), thr) ** (sparsity - 2)
        e0 = w0 ** sparsity * np.maximum(np.abs(a), thr) ** (sparsity - 2)
        return e0, e1

    gram = _weighted_grams(vecs)
    e0, e1 = weights(layers)
    for it in range(1, iterations + 1):
        k_count = layers.shape[1]
        if k_count < 2:
            break
        grams = gram(e0 + e1) + lam[None]  # V^T diag(ew_k) V + Lambda of every layer: [K, E, E]
        b = vecs.T @ e1[:, : k_count - 1]  # [E, K-1]
        t = vecs.T @ e0[:, -1] + t_base  # [E]
        y = _solve_sum_coupled(grams[:-1], grams[-1], b + t[:, None])  # [E, K-1]
        layers = np.empty((n, k_count))
        layers[:, :-1] = vecs @ y
        layers[:, -1] = 1.0 - layers[:, :-1].sum(axis=1)
        if it > remove_at:
            keep = np.abs(layers).max(axis=0) > prune_below
            if keep.any() and not keep.all():
                layers = layers[:, keep]
                # the dropped layers' mass goes to the last layer, keeping the sum-to-one constraint exact
                layers[:, -1] += 1.0 - layers.sum(axis=1)
            remove_at += remove_cycle
        e0, e1 = weights(layers)
    return layers


def _weighted_grams(vecs: np.ndarray, max_bytes: int = 512 * 2**20):
    """A function ``ew [N, K] -> [K, E, E]`` of the Gram matrices ``V^T diag(ew_k) V``.

    Within ``max_bytes`` the products ``v_pe v_pf`` (``e <= f``) are tabulated once as ``[N, E(E+1)/2]``,
    so each call is one matrix product (about 5x faster than K separate ones); beyond, one product per layer.
    """
    n, e = vecs.shape
    iu = np.triu_indices(e)
    if n * len(iu[0]) * 8 > max_bytes:
        return lambda ew: np.stack([(vecs * ew[:, k : k + 1]).T @ vecs for k in range(ew.shape[1])])
    v = np.ascontiguousarray(vecs)
    pairs = np.empty((n, len(iu[0])))  # [N, E(E+1)/2], row-major pairs (e, f >= e) as triu_indices orders them
    start = 0
    for i in range(e):
        np.multiply(v[:, i : i + 1], v[:, i:], out=pairs[:, start : start + e - i])
        start += e - i

    def grams(ew: np.ndarray) -> np.ndarray:
        upper = ew.T @ pairs  # [K, E(E+1)/2]
        out = np.zeros((ew.shape[1], e, e))
        out[:, iu[0], iu[1]] = upper
        out[:, iu[1], iu[0]] = upper
        return out

    return grams


def _solve_sum_coupled(blocks: np.ndarray, T: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``A_k y_k + T sum_j y_j = rhs_k`` for all k (Spectral Matting Eq. 9's block system).

    The official code builds and solves the dense ``(K-1)E`` square system; it equals
    ``blockdiag(A_k) + (1 1^T) kron T``, so with ``s = sum_j y_j``:
    ``(I + (sum_k A_k^-1) T) s = sum_k A_k^-1 rhs_k`` and ``y_k = A_k^-1 (rhs_k - T s)``:
    the same solution for ``K`` solves of size E instead of one of size ``(K-1)E``.

    Args: blocks ``[K-1, E, E]``, T ``[E, E]``, rhs ``[E, K-1]``. Returns y ``[E, K-1]``.
    """
    inv = np.linalg.inv(blocks)  # [K-1, E, E]
    r = np.einsum("kef,fk->ek", inv, rhs)  # A_k^-1 rhs_k: [E, K-1]
    S = inv.sum(axis=0)  # [E, E]
    s = np.linalg.solve(np.eye(T.shape[0]) + S @ T, r.sum(axis=1))  # [E]
    return r - np.einsum("kef,f->ek", inv, T @ s)


def group_layers(layers: np.ndarray, features: np.ndarray, groups: int, seed: int = 0) -> np.ndarray:
    """Sum layers into ``groups`` by k-means on their mean semantic features (official ``groupSegments``).

    Args: layers ``[N, K]``; features ``[N, C]``. Returns ``[N, G]`` with ``G = min(groups, K)``.
    """
    mass = layers.sum(axis=0)
    means = (layers.T @ features) / np.where(np.abs(mass) > 1e-12, mass, 1e-12)[:, None]  # [K, C]
    ids = _kmeans(means, groups, seed, n_init=10)
    g = int(ids.max()) + 1
    return np.stack([layers[:, ids == i].sum(axis=1) for i in range(g)], axis=1)


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Colour gradient magnitude ``[H, W]`` of ``image [H, W, 3]`` in [0, 1] (Farid 5-tap derivative filters)."""
    from skimage.filters import farid_h, farid_v

    sq = np.zeros(image.shape[:2])
    for c in range(image.shape[2]):
        sq += farid_h(image[..., c]) ** 2 + farid_v(image[..., c]) ** 2
    return np.sqrt(sq)


def relaxed_sparsification(layers: np.ndarray, L: sp.spmatrix, grad: np.ndarray, outer: int = 20,
                           inner: int = 100, polish: int = 1000) -> np.ndarray:
    """The final soft segments from grouped layers (official ``sparsifySegments``).

    Minimises, over layers ``a_k`` (``[N]`` each),
    ``sum_k a_k^T L a_k + sigma_s sum |a|^p + |1 - a|^p + sigma_f ||a - a0||^2 + delta ||sum_k a_k - 1||^2``
    (weights: :data:`RELAXED_WEIGHTS`) with per-pixel ``p = 0.9 + min(grad, 0.1)``, the sparsity term reweighted ``outer`` times
    (IRLS) and each weighted system solved by ``inner`` conjugate-gradient iterations, then one
    ``polish`` CG solve without the sparsity term. ``a0``: the grouped layers with values below
    0.1 set to 0, above 0.9 to 1, renormalised.

    Args: layers ``[N, G]``; L ``[N, N]``; grad ``[N]``. Returns ``[N, G]`` (not yet clipped).
    """
    n, g = layers.shape
    sigma_s, sigma_f, delta = RELAXED_WEIGHTS
    a0 = np.where(layers < 0.1, 0.0, np.where(layers > 0.9, 1.0, layers))
    total = a0.sum(axis=1, keepdims=True)
    a0 = np.where(total > 0, a0 / np.where(total > 0, total, 1.0), 1.0 / g)
    p = (0.9 + np.minimum(grad, 0.1))[:, None]  # [N, 1]
    L = sp.csr_matrix(L)

    def operator(diag: np.ndarray) -> sla.LinearOperator:
        def matvec(x):
            X = x.reshape(n, g, order="F")  # layer k is column k: the official stacking a_1; a_2; ...
            out = L @ X + delta * X.sum(axis=1, keepdims=True) + diag * X
            return out.ravel(order="F")

        return sla.LinearOperator((n * g, n * g), matvec=matvec, dtype=np.float64)

    x = a0.copy()
    eps = 1e-2
    for _ in range(outer):
        u = np.maximum(np.abs(x), eps) ** (p - 2)
        v = np.maximum(np.abs(1 - x), eps) ** (p - 2)
        A = operator(sigma_s * (u + v) + sigma_f)
        b = sigma_s * v + sigma_f * a0 + delta
        x = _cg(A, b, x, inner)
    if polish > 0:
        A = operator(np.full((n, 1), sigma_f))
        x = _cg(A, sigma_f * x + delta, x, polish)
    return x


def _cg(A: sla.LinearOperator, b: np.ndarray, x0: np.ndarray, maxiter: int) -> np.ndarray:
    """At most ``maxiter`` conjugate-gradient iterations (relative tolerance 1e-6, MATLAB pcg's), from ``x0``."""
    n, g = x0.shape
    x, _ = sla.cg(A, b.ravel(order="F"), x0=x0.ravel(order="F"), rtol=1e-6, maxiter=maxiter)
    return x.reshape(n, g, order="F")


def normalise_layers(layers: np.ndarray, axis: int = -1) -> np.ndarray:
    """Clip to >= 0 and divide by the sum over ``axis``; all-zero pixels become uniform."""
    a = np.clip(layers, 0.0, None)
    total = a.sum(axis=axis, keepdims=True)
    uniform = 1.0 / a.shape[axis]
    return np.where(total > 1e-12, a / np.where(total > 1e-12, total, 1.0), uniform)


# ------------------------------------------------------------------------------------------------ whole image

def affinity_laplacian(image: np.ndarray, features: np.ndarray, p: SoftSegmentsParams,
                       superpixels: np.ndarray | None = None) -> tuple[SuperpixelGraph, sp.csr_matrix]:
    """Step 1: the superpixel graph and ``L = D - W``, ``W = W_matting + w_s W_semantic + w_c W_colour``.

    Args: image float RGB ``[H, W, 3]`` in [0, 1]; features ``[H, W, C]`` in [0, 1]; superpixel ids
    ``[H, W]`` or None (SLIC as the params say). Returns the graph and the Laplacian ``[H*W, H*W]``.
    """
    h, w = image.shape[:2]
    if superpixels is None:
        count = p.superpixels or default_superpixel_count(h, w)
        superpixels = compute_superpixels(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), count,
                                          p.superpixel_compactness, p.superpixel_method)
    graph = superpixel_graph(np.asarray(superpixels, dtype=np.int64))
    W = matting_affinity(image, eps=p.matting_eps)
    if p.semantic_weight:
        W = W + p.semantic_weight * semantic_affinity(graph, features, p.semantic_steepness, p.semantic_center)
    if p.colour_weight:
        W = W + p.colour_weight * colour_affinity(graph, image, p.colour_steepness, p.colour_center, p.colour_radius)
    return graph, laplacian(W)


def soft_segments(image: np.ndarray, features: np.ndarray, params: SoftSegmentsParams | None = None,
                  superpixels: np.ndarray | None = None) -> SoftSegmentsResult:
    """Semantic soft segments of an image at the resolution given (docs/related-methods.md B.5).

    Args:
        image: float RGB ``[H, W, 3]`` in [0, 1].
        features: semantic features ``f~ [H, W, C]`` in [0, 1] (C = 3: guided-filtered PCA of
            network features, B.4; any per-pixel descriptor in [0, 1] works, e.g. the colour).
        params: the parameters (defaults: :class:`SoftSegmentsParams`).
        superpixels: optional superpixel ids ``[H, W]`` (default: SLIC as the params say).
    Returns:
        layers float64 ``[K, H, W]`` with K = ``params.segments``, non-negative and summing to one
        per pixel (a group that did not form stays all zero), and ``info`` (timings in seconds,
        superpixel and layer counts, eigenvalues).
    """
    p = params or SoftSegmentsParams()
    img = np.asarray(image, dtype=np.float64)
    feats = np.asarray(features, dtype=np.float64)
    h, w = img.shape[:2]
    if feats.shape[:2] != (h, w):
        raise ValueError(f"soft segments: features {feats.shape[:2]} and image {(h, w)} differ in size")
    n = h * w
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    graph, L = affinity_laplacian(img, feats, p, superpixels)
    times["graph"] = time.perf_counter() - t0

    t = time.perf_counter()
    vals, vecs = smallest_eigenvectors(L, p.eigenvectors, p.eig_shift)
    times["eigenvectors"] = time.perf_counter() - t

    t = time.perf_counter()
    frows = feats.reshape(n, -1)
    init = _kmeans(frows, p.initial_layers, p.seed)
    layers = constrained_sparsification(vecs, vals, L, init, p.initial_iterations, p.sparsity, p.prune_below)
    times["constrained_sparsification"] = time.perf_counter() - t
    initial_count = layers.shape[1]

    t = time.perf_counter()
    grouped = group_layers(layers, frows, p.segments, p.seed)
    grad = gradient_magnitude(img).ravel()
    final = relaxed_sparsification(grouped, L, grad, p.final_outer_iterations, p.final_cg_iterations,
                                   p.final_polish_iterations)
    final = normalise_layers(final, axis=1)  # [N, G]
    times["relaxed_sparsification"] = time.perf_counter() - t

    out = np.zeros((p.segments, h, w))
    out[: final.shape[1]] = final.T.reshape(-1, h, w)
    times["total"] = time.perf_counter() - t0
    info = {"superpixels": graph.count, "eigenvalues": [float(v) for v in vals[:5]],
            "initial_layers": int(init.max()) + 1, "layers_after_pruning": int(initial_count),
            "segments": int(final.shape[1]), "seconds": times}
    return SoftSegmentsResult(out, info)


def working_shape(h: int, w: int, side: int) -> tuple[int, int]:
    """``(h', w')`` with the longer side at most ``side`` (never upscaled), aspect ratio kept."""
    scale = min(1.0, side / max(h, w))
    return max(3, round(h * scale)), max(3, round(w * scale))


def resize(array: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[H, W, C]`` float data to ``(h, w)`` (area averaging when shrinking)."""
    import cv2

    h, w = shape_hw
    if array.shape[:2] == (h, w):
        return array
    shrink = h < array.shape[0] and w < array.shape[1]
    out = cv2.resize(np.ascontiguousarray(array, dtype=np.float32), (w, h),
                     interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(h, w, -1).astype(np.float64)


def soft_segments_of_image(image_uint8: np.ndarray, features: np.ndarray | None,
                           params: SoftSegmentsParams | None = None) -> SoftSegmentsResult:
    """Soft segments of a full-size image: resize to the working resolution, segment, upsample back.

    Args:
        image_uint8: RGB ``[H, W, 3]`` uint8.
        features: semantic features ``[h, w, C]`` in [0, 1] at any resolution (resized to the
            working one), or None to use the image's colour.
        params: parameters (``working_side`` sets the working resolution).
    Returns:
        layers float32 ``[K, H, W]``: bilinearly upsampled, clipped to >= 0 and renormalised to sum to one.
    """
    p = params or SoftSegmentsParams()
    h, w = image_uint8.shape[:2]
    wh, ww = working_shape(h, w, p.working_side)
    img = resize(image_uint8.astype(np.float64) / 255.0, (wh, ww))
    feats = img if features is None else np.clip(resize(features, (wh, ww)), 0.0, 1.0)
    res = soft_segments(img, feats, p)
    t = time.perf_counter()
    up = resize(res.layers.transpose(1, 2, 0), (h, w))  # [H, W, K]
    layers = normalise_layers(up, axis=2).transpose(2, 0, 1).astype(np.float32)
    res.info["seconds"]["upsample"] = time.perf_counter() - t
    res.info["working_shape"] = [wh, ww]
    return SoftSegmentsResult(layers, res.info)
