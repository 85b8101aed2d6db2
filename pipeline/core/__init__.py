"""The base layer every other room stands on; it imports nothing else of the project.

:mod:`~pipeline.core.errors` (the named errors), :mod:`~pipeline.core.config` with
:mod:`~pipeline.core.config_values` (type coercion) and :mod:`~pipeline.core.config_checks` (every
value check, run when a config is loaded), :mod:`~pipeline.core.fingerprint` (the fingerprint values a
config takes over), :mod:`~pipeline.core.fileio` (the one atomic writer), :mod:`~pipeline.core.layout`
(the run-folder names), :mod:`~pipeline.core.checkpoint` (the checkpoint file format),
:mod:`~pipeline.core.label_map`, :mod:`~pipeline.core.constants` (air HU, image file endings),
:mod:`~pipeline.core.geometry` (voxel spacing from an affine), :mod:`~pipeline.core.runtime` (device
and speed options) and :mod:`~pipeline.core.distributed` (torchrun).
"""
