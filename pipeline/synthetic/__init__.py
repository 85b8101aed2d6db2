"""Synthetic abdominal CT phantoms with a pancreas label, for the demo and the tests."""
