"""Training of one fold on MONAI's engines: the engine set-up, event handlers, experiment tracking."""
