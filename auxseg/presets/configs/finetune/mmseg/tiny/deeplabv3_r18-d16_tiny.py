# The tiny DeepLabV3 ResNet-18 at output stride 16 (mmseg's -d16 setting: only the last stage dilated), about
# half the compute of the -d8 one. The built-in demo uses it; pre-training follows its stride (docs/pipeline.md).
_base_ = ['./deeplabv3_r18-d8_tiny.py']
model = dict(backbone=dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)))
