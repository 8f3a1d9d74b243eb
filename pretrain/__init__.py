"""Stage 2: cross-image pixel contrastive pre-training on auxiliary labels.

Reads an auxiliary-label folder, trains a dilated ResNet (+ projection head)
with a supervised pixel InfoNCE loss over two augmented views, and exports
the backbone for mmsegmentation and torchvision. Entry points:
``pretrain.train.run(cfg)`` and ``auxseg pretrain CONFIG [key=value ...]``.
"""
