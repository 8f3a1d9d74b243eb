"""Pure tensor math that two floors use: QR / RQ with implicit posteriors (pretrain's objective and
finetune's losses) and the switch-MRF of local prediction (pretrain's objective and the boundaries).
Room rule (tests/test_architecture.py): torch, numpy and the standard library only; no I/O, no module state."""
