"""Boundary evaluation beside the stages: BSDS-style scoring, classical baselines, learned boundaries.

No stage imports this package; it reads what pretrain writes through the ground floor's
contracts (:mod:`auxseg.contracts.small_model`, :mod:`auxseg.contracts`). Modules:
:mod:`boundaries.evaluation` (matching, thinning, ODS / OIS / AP), :mod:`boundaries.baselines`
(Sobel, Canny, SLIC), :mod:`boundaries.learned` (boundaries from local-prediction switch
posteriors), and the ``auxseg boundaries`` command (:mod:`boundaries.cli`, :mod:`boundaries.learned_cli`).
"""
