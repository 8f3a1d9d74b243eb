"""The closed-form matting affinity and Laplacian (Levin, Lischinski and Weiss, TPAMI 2008).

Every ``(2r+1) x (2r+1)`` window ``k`` that lies fully inside the image fits a
local colour Gaussian (mean ``mu_k``, covariance ``Sigma_k``); two pixels ``i, j``
of the window get the affinity

    W_ij += (1 + (I_i - mu_k)^T (Sigma_k + eps/|w| Id)^{-1} (I_j - mu_k)) / |w|,   |w| = (2r+1)^2,

summed over all windows holding both. ``L = D - W`` (``D`` the row sums of
``W``) is then exactly Levin's matting Laplacian: symmetric, positive
semi-definite, with the constant vector in its null space. Semantic soft
segmentation uses ``r = 1`` and ``eps = 1e-7`` (docs/related-methods.md B.5,
official ``mattingAffinity.m``). Vectorised over windows: no Python loop over pixels.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def matting_affinity(image: np.ndarray, eps: float = 1e-7, radius: int = 1) -> sp.csr_matrix:
    """The symmetric matting affinity ``W`` of an image.

    Args:
        image: float RGB ``[H, W, 3]`` in [0, 1] (``H, W >= 2 radius + 1``).
        eps: covariance regulariser; divided by the window size ``(2r+1)^2`` as in Levin et al.
            (paper/official code of semantic soft segmentation: 1e-7).
        radius: window radius r (1: 3x3 windows).
    Returns:
        float64 CSR ``[H*W, H*W]``, symmetric, pixel index ``y * W + x``; the diagonal holds the
        windows' self-affinities (they cancel in ``D - W``). Entries are bounded by ``(1 + |w|) / |w|``
        per window (a Mahalanobis distance within the window's own sample is at most ``|w|``).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"matting affinity: image must be [H, W, 3], got shape {img.shape}")
    h, w, c = img.shape
    size = 2 * radius + 1
    n = h * w
    if h < size or w < size:
        return sp.csr_matrix((n, n))
    nwin = size * size
    # window members: [num_windows, nwin] pixel indices and [num_windows, nwin, 3] colours
    idx = np.lib.stride_tricks.sliding_window_view(np.arange(n).reshape(h, w), (size, size))
    idx = idx.reshape(-1, nwin)
    cols = img.reshape(n, c)[idx]  # [M, nwin, 3]
    mu = cols.mean(axis=1, keepdims=True)  # [M, 1, 3]
    x = cols - mu  # [M, nwin, 3]
    cov = np.einsum("mpc,mpd->mcd", x, x) / nwin + (eps / nwin) * np.eye(c)  # [M, 3, 3], biased as in the paper
    # Sigma^-1 x_j via a batched solve (symmetric positive definite: eps > 0)
    sol = np.linalg.solve(cov, x.transpose(0, 2, 1))  # [M, 3, nwin]
    vals = (1.0 + np.einsum("mpc,mcq->mpq", x, sol)) / nwin  # [M, nwin, nwin]
    rows = np.repeat(idx, nwin, axis=1).ravel()  # row i of pair (i, j), i-major like vals
    colsi = np.tile(idx, (1, nwin)).ravel()
    W = sp.coo_matrix((vals.ravel(), (rows, colsi)), shape=(n, n)).tocsr()  # duplicates summed
    return ((W + W.T) * 0.5).tocsr()


def laplacian(W: sp.spmatrix) -> sp.csr_matrix:
    """The unnormalised graph Laplacian ``L = D - W`` with ``D = diag(W 1)`` (official ``affinityMatrixToLaplacian``).

    ``L 1 = 0`` for any ``W``; ``L`` is positive semi-definite when ``W`` is symmetric with
    non-negative off-diagonal entries or is a matting affinity (signed semantic affinities can
    make it indefinite, as in the official code).
    """
    W = sp.csr_matrix(W)
    return (sp.diags(np.asarray(W.sum(axis=1)).ravel()) - W).tocsr()


def matting_laplacian(image: np.ndarray, eps: float = 1e-7, radius: int = 1) -> sp.csr_matrix:
    """Levin et al.'s matting Laplacian ``D - W`` of an RGB image in [0, 1] ``[H, W, 3]``: CSR ``[H*W, H*W]``."""
    return laplacian(matting_affinity(image, eps=eps, radius=radius))
