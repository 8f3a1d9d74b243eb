# DeepLabV3 ResNet-18 on CamVid at half resolution (240x180): the CPU benchmark protocol
# (docs/benchmarks.md). Same model as deeplabv3_r18-d8_camvid.py; smaller images and batch so a
# 2-core CPU runs it in minutes. Its numbers are not comparable to full-resolution runs.
_base_ = './deeplabv3_r18-d8_camvid.py'
crop_size = (180, 240)  # (h, w): the whole half-size frame
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(240, 180), ratio_range=(0.75, 1.5), keep_ratio=True),  # milder than full-res
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(240, 180), keep_ratio=True),  # the model sees 240x180; mmseg upsamples predictions to 480x360 and scores them against the full-size labels
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=2, dataset=dict(pipeline=train_pipeline))  # 2 cores
val_dataloader = dict(num_workers=2, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=400, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400, val_interval=200)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=1))
