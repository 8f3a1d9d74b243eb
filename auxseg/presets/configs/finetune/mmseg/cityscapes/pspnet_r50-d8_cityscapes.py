# PSPNet ResNet-50 on Cityscapes: mmseg's own recipe (dataset, layout, schedule), run in one process.
_base_ = 'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py'
custom_imports = dict(imports=['finetune.datasets', 'finetune.metrics'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)  # one process needs BN; finetune.run switches to SyncBN under DDP
model = dict(
    pretrained=None,  # never download open-mmlab weights; finetune.convert sets the backbone init
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=8)  # the same 8 images per step as mmseg's 4xb2, on one GPU
val_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])  # IoUMetric + per-class IoU in the results
test_evaluator = val_evaluator
