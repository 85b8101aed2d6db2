"""Per-case metrics on the original grid and their summaries.

Modules: ``evaluate`` (the entry points: load a mask pair, evaluate cases, summarise, read and write
tables), ``metrics`` (per-class Dice, IoU, precision, recall, HD95, ASSD, NSD from monai.metrics),
``cases`` (one case's rows), ``lesions`` (tumour detection: components, case level, FROC),
``bootstrap`` (subject-level percentile intervals) and ``summary`` (per-class blocks with intervals).
"""
