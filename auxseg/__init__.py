"""auxseg: contrastive pre-training of segmentation networks with auxiliary labels.

This package holds what the three stages share (config, checkpoint I/O, file
helpers, the command line). The stages are the packages ``auxlabels``,
``pretrain`` and ``finetune``.
"""

__version__ = "0.1.0"
