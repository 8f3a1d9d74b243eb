"""Stage 1: auxiliary labels from a frozen feature extractor (K-means, outliers, superpixel vote, PmIoU).

Entry points: :func:`auxlabels.pipeline.run` (``run(cfg) -> manifest``) and the
config schema :class:`auxlabels.config.AuxLabelsConfig`; the command is
``auxseg auxlabels CONFIG [key=value ...]``. See docs/auxlabels.md.
"""
