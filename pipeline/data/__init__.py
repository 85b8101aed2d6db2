"""Cases and their files: the manifest and its schema, importers of public layouts, folds, `pancreas-seg check` and the dataset fingerprint."""
