"""The networks a reader rebuilds from an export: the dilated ResNet (mmseg's ResNetV1c / ResNet key layout)
and the small local-prediction networks. Room rule (tests/test_architecture.py): torch and torchvision only."""
