"""Sliding-window inference on whole scans: :mod:`~pipeline.inference.predictor` (one scan),
:mod:`~pipeline.inference.batch` (a batch of scans, resumable; its cases overlapped by
:mod:`~pipeline.inference.overlap`) with its per-case :mod:`~pipeline.inference.records`,
:mod:`~pipeline.inference.inputs` (what ``--input`` names),
:mod:`~pipeline.inference.loading` (checkpoints, ensembles and model packages), and the mask and DICOM
SEG writers. Exports of a trained model (``pancreas-seg export``): :mod:`~pipeline.inference.package`
(a checked zip) with its :mod:`~pipeline.inference.model_card`, :mod:`~pipeline.inference.bundle` (a
MONAI bundle) and :mod:`~pipeline.inference.onnx_export`."""
