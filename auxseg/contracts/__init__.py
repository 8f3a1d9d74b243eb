"""The hand-over contracts between the stages, each written down once (docs/contracts.md).

- :mod:`auxseg.contracts.label_folder`: the auxiliary-label folder (``auxlabels``
  writes it, ``pretrain`` reads it): format string, label path mapping,
  ``labels_sha256``, manifest validation.
- :mod:`auxseg.contracts.backbone`: the backbone and decoder exports
  (``pretrain`` writes them, ``finetune`` and ``auxlabels`` read them), and
  reading every supported ResNet checkpoint kind (torchvision, MoCo, mmseg,
  our export) into one key format.
- :mod:`auxseg.contracts.common`: normalisation constants, the stem -> mmseg
  type mapping and the versions block every artefact carries.

Writers and readers import the same functions, so they agree byte for byte.
"""
