"""The top floor: what chains the three stages (docs/architecture.md).

- ``loop.cli``: the ``auxseg`` command (one subcommand per stage, plus
  ``pipeline``, ``demo``, ``env``); ``python -m loop`` runs it too (torchrun).
- ``loop.pipeline``: the semi-supervised loop, segmenter -> auxiliary labels
  -> pre-train -> fine-tune, with its baseline.
- ``loop.report``: the report of a pipeline run (tables, curves, figures).

Nothing below this floor imports it.
"""
