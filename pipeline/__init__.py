"""The pancreas segmentation pipeline, one subpackage per stage.

In layer order (each imports only from those below it): :mod:`pipeline.cli` (the ``pancreas-seg``
command) → :mod:`pipeline.workflows` (cross-validation, parallel folds, compare, demo) →
:mod:`pipeline.report` → :mod:`pipeline.training`, :mod:`pipeline.inference`,
:mod:`pipeline.evaluation` → :mod:`pipeline.data` (manifests, folds, checks, fingerprint),
:mod:`pipeline.synthetic` (phantoms) → the top-level ``transforms`` and ``models`` packages →
:mod:`pipeline.core` (errors, config, atomic writes, run-folder layout, runtime, torchrun).
"""

__version__ = "0.1.0"
