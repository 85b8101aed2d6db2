"""Orchestration of the pancreas segmentation pipeline: config, manifests, phantoms, training, inference."""

__version__ = "0.1.0"
