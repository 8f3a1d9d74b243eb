"""The tiny settings the end-to-end tests run the loop with (one place, so the tests cannot drift apart)."""

# overrides of configs/pipeline/demo.yaml: 12 + 4 small images, a few iterations per step (~40 s on 2 cores)
TINY_PIPELINE = [
    "data.synthetic={num_train: 12, num_val: 4, height: 64, width: 80, num_classes: 6, seed: 1}",
    "labelled.num_images=4",
    "finetune.max_iters=4",
    "finetune.val_interval=2",
    "finetune.checkpoint_interval=4",
    "finetune.num_workers=0",
    "auxlabels.kmeans.n_fit=12",
    "auxlabels.kmeans.fit_pixels=3000",
    "auxlabels.superpixels.n_segments=40",
    "pretrain.data.batch_size=2",
    "pretrain.train.max_iters=3",
    "pretrain.train.checkpoint_every=3",
    "progress=false",
    "seeds=[0]",
]
