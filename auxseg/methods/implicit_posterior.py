"""The implicit-posterior losses QR and RQ (Rolf, Malkin et al., UAI 2022) as pure functions.

A network gives per-pixel class probabilities q_i(l); a prior p_i(l) says what
is believed about pixel i's label. With the class mass over the batch
``S_l = sum_i q_i(l)``, the implied posterior is

    r_i(l) = p_i(l) q_i(l) / S_l  /  sum_l' p_i(l') q_i(l') / S_l'

and the two objectives are (``../shared/docs/related-methods.md`` A.2-A.3, in
the form of the authors' land-cover code):

- QR (free energy with the generative side in closed form), per pixel:
  ``sum_l qbar_l log qbar_l - mean_i sum_l q_i(l) log p_i(l)`` with qbar the
  mean of q over all pixels of the batch (equal to L_QR / N up to a constant;
  of all processes' pixels in a distributed run: :func:`batch_class_mass`);
- RQ: ``mean_i KL(r_i || q_i)``, with gradients through r as well.

Both smooth q and p additively (1e-4, then renormalise; supplement E.1.3).
With a hard (one-hot) prior and no smoothing r = p, and RQ is cross-entropy.
Prediction is argmax q, or argmax r with the class mass of the evaluated image
(A.6 step 5): :func:`posterior_labels`. The pre-training objectives
(``pretrain/objectives/implicit_posterior.py``) and the fine-tuning losses
(``finetune/losses.py``) both use these functions.
"""

from __future__ import annotations

import torch

SMOOTHING = 1e-4  # supplement E.1.3: added to the network's softmax and to the prior, then renormalised


def smooth(prob: torch.Tensor, eps: float = SMOOTHING) -> torch.Tensor:
    """``(prob + eps) / sum(prob + eps)`` over the class dimension (dim 1): no probability below about eps."""
    prob = prob + eps
    return prob / prob.sum(dim=1, keepdim=True)


def class_mass(q: torch.Tensor) -> torch.Tensor:
    """qbar ``[K]``: the mean of ``q [N, K]`` over the N pixels (S_l / N)."""
    return q.mean(dim=0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the backward pass sums the gradients over them too.

    Every process computed a loss on the sum, so the gradient of their total
    w.r.t. this process's input is the sum of their gradients. (Our own rather
    than ``torch.distributed.nn.functional.all_reduce``: deprecated, with a
    private module as its replacement.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def batch_class_mass(q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """qbar ``[K]`` and the pixel count N over the whole batch, also when data parallelism splits it across processes.

    In one process: :func:`class_mass` (zeros for ``N = 0``) and N. In a
    process group of several, the per-class sums and the pixel counts of all
    processes are summed across them, forward and backward, so every process
    uses the batch's mass, gets the exact gradient of it, and sees the same N
    (decide on it, not on the process's own pixel count, whatever must happen
    on every process alike: skipping a step, updating a running mass). DDP's
    averaging then gives the gradient of the mean of the processes' losses
    (the whole batch's mean loss when each process has as many pixels). A
    collective: every process must call it at every step, also with no pixel,
    and its loss must depend on the result at every step (add
    ``0 * qbar.sum()`` where a branch does not use it), or the backward passes
    wait for each other.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):  # one process
        return (class_mass(q) if q.shape[0] else q.new_zeros(q.shape[1])), q.shape[0]
    stats = _AllReduceSum.apply(torch.cat([q.sum(dim=0), q.new_full((1,), float(q.shape[0]))]))  # [K + 1]: sums, N
    n = int(stats[-1].item())
    return stats[:-1] / max(n, 1), n


def implied_posterior(q: torch.Tensor, p: torch.Tensor, qbar: torch.Tensor | None = None) -> torch.Tensor:
    """r ``[N, K]`` from q, p ``[N, K]`` (rows sum to 1) and the class mass ``qbar [K]`` (default: of q).

    Only the ratios of qbar enter r, so the mean over pixels and the sum S_l give the same r.
    """
    qbar = class_mass(q) if qbar is None else qbar
    z = p * q / qbar.clamp_min(1e-12)  # [N, K]
    return z / z.sum(dim=1, keepdim=True).clamp_min(1e-12)


def qr_loss(q: torch.Tensor, p: torch.Tensor, qbar: torch.Tensor | None = None) -> torch.Tensor:
    """QR: ``sum_l qbar_l log qbar_l - mean_i sum_l q_i(l) log p_i(l)``; q, p ``[N, K]``, qbar ``[K]`` (default: of q)."""
    qbar = class_mass(q) if qbar is None else qbar
    return (qbar * qbar.clamp_min(1e-12).log()).sum() - (q * p.clamp_min(1e-12).log()).sum(dim=1).mean()


def rq_loss(q: torch.Tensor, p: torch.Tensor, qbar: torch.Tensor | None = None) -> torch.Tensor:
    """RQ: ``mean_i sum_l r_i(l) (log r_i(l) - log q_i(l))``, r not detached; q, p ``[N, K]``."""
    r = implied_posterior(q, p, qbar)
    return (r * (r.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(dim=1).mean()


def soft_cross_entropy(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``-mean_i sum_l p_i(l) log q_i(l)``; q, p ``[N, K]``: the warm-up loss on a soft prior (A.6 step 6)."""
    return -(p * q.clamp_min(1e-12).log()).sum(dim=1).mean()


def posterior_labels(logits: torch.Tensor, prior: torch.Tensor, eps: float = SMOOTHING) -> torch.Tensor:
    """argmax r ``[H, W]`` int64 of one image: logits and prior ``[K, H, W]``, class mass over the image.

    q = smooth(softmax(logits)), p = smooth(prior); r as :func:`implied_posterior`
    with qbar the mean of q over the pixels whose prior row is not all zero
    (the evaluated image, A.6 step 5). Pixels with an all-zero prior (no
    information) take argmax q.
    """
    k = logits.shape[0]
    q = smooth(logits.float().softmax(dim=0).reshape(k, -1).T, eps)  # [H*W, K]
    p = prior.float().reshape(k, -1).T  # [H*W, K]
    pred = q.argmax(dim=1)
    valid = p.sum(dim=1) > 0
    if int(valid.sum()) > 0:
        qv, pv = q[valid], p[valid]
        pv = smooth(pv, eps) if eps > 0 else pv / pv.sum(dim=1, keepdim=True)
        pred[valid] = implied_posterior(qv, pv, class_mass(qv)).argmax(dim=1)
    return pred.reshape(logits.shape[1:])
