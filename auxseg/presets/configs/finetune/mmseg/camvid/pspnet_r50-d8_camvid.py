# PSPNet ResNet-50 on CamVid (11 classes): mmseg's model, our dataset and schedule.
_base_ = ['mmseg::_base_/models/pspnet_r50-d8.py', '../_base_/camvid.py', 'mmseg::_base_/default_runtime.py']
norm_cfg = dict(type='BN', requires_grad=True)  # one process needs BN; finetune.run switches to SyncBN under DDP
model = dict(
    pretrained=None,  # never download open-mmlab weights; finetune.convert sets the backbone init
    data_preprocessor=dict(size={{_base_.crop_size}}),  # pad batches to the crop size
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(num_classes=11, norm_cfg=norm_cfg),
    auxiliary_head=dict(num_classes=11, norm_cfg=norm_cfg))
