"""Sliding-window inference on whole scans: the predictor, batches of scans, model loading, mask and DICOM SEG writers."""
