# Tiny CPU preset: pspnet ResNet-18 on 64x64 synthetic scenes, narrow heads so a step takes well under a second.
_base_ = ['mmseg::_base_/models/pspnet_r50-d8.py', '../_base_/tiny_synthetic.py', 'mmseg::_base_/default_runtime.py']
norm_cfg = dict(type='BN', requires_grad=True)  # one process needs BN
model = dict(
    pretrained=None,  # never download open-mmlab weights; finetune.convert sets the backbone init
    data_preprocessor=dict(size={{_base_.crop_size}}),  # pad batches to the crop size
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=16, num_classes=6, norm_cfg=norm_cfg),  # narrow: speed
    auxiliary_head=dict(in_channels=256, channels=8, num_classes=6, norm_cfg=norm_cfg))
env_cfg = dict(cudnn_benchmark=False)  # tiny varying shapes: benchmarking would only cost time
