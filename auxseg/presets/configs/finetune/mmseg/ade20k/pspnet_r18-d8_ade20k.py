# PSPNet ResNet-18 on ADE20K: the ResNet-50 preset with mmseg's ResNet-18 head widths; same schedule.
_base_ = './pspnet_r50-d8_ade20k.py'
model = dict(
    backbone=dict(depth=18),
    decode_head=dict(in_channels=512, channels=128),  # ResNet-18's C5 has 512 channels (mmseg r18 configs)
    auxiliary_head=dict(in_channels=256, channels=64))
