"""Stage 3: fine-tune DeepLabV3 / PSPNet with mmsegmentation on seeded label splits (docs/finetune.md).

- ``finetune.run.run(FinetuneConfig) -> dict``: the whole stage; writes results.json.
- ``finetune.convert``: checkpoint -> mmseg backbone weights with exact key checks.
- ``finetune.splits``: deterministic seeded subsets of the training images.
- ``finetune.datasets``: CamVid, NYUv2-40 and folder datasets for mmseg; Cityscapes label ids.
- ``finetune.priors``: per-pixel priors as targets (coarse labels, prior folders): LoadPrior, PackSegInputsWithPrior.
- ``finetune.losses``: QR / RQ as mmseg losses (QRLoss, RQLoss) and the Prior* decode heads that feed them.
- ``finetune.consistency*``: weak-to-strong consistency fine-tuning (FixMatch, UniMatch; docs/consistency.md):
  the math (``consistency_losses``), the step (``consistency``: ConsistencyEncoderDecoder and its data
  preprocessor), the unlabelled views (``consistency_data``), configuring a run and its log (``consistency_run``).
- ``finetune.ddp``: distributed fine-tuning on CPUs (gloo).
- ``auxseg.mmseg_compat.import_mmseg()``: call before importing mmseg anywhere.
"""
