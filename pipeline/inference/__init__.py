"""Sliding-window inference on whole scans: :mod:`~pipeline.inference.predictor` (one scan),
:mod:`~pipeline.inference.batch` (a batch of scans, resumable; its cases overlapped by
:mod:`~pipeline.inference.overlap`) with its per-case :mod:`~pipeline.inference.records`,
:mod:`~pipeline.inference.inputs` (what ``--input`` names),
:mod:`~pipeline.inference.loading` (checkpoints and ensembles), and the mask and DICOM SEG writers."""
