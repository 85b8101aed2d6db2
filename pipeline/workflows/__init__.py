"""Multi-stage jobs: cross-validation, parallel folds, the U-Net comparison, the demo."""
