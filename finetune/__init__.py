"""Stage 3: fine-tune DeepLabV3 / PSPNet with mmsegmentation on seeded label splits (docs/finetune.md).

- ``finetune.run.run(FinetuneConfig) -> dict``: the whole stage; writes results.json.
- ``finetune.convert``: checkpoint -> mmseg backbone weights with exact key checks.
- ``finetune.splits``: deterministic seeded subsets of the training images.
- ``finetune.datasets``: CamVid, NYUv2-40 and folder datasets for mmseg; Cityscapes label ids.
- ``finetune.priors``: per-pixel priors as targets (coarse labels, prior folders): LoadPrior, PackSegInputsWithPrior.
- ``finetune.losses``: QR / RQ as mmseg losses (QRLoss, RQLoss) and the Prior* decode heads that feed them.
- ``auxseg.mmseg_compat.import_mmseg()``: call before importing mmseg anywhere.
"""
