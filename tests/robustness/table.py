"""The robustness table: how every subcommand must answer every kind of bad input.

Outcomes:

- ``E`` error: exit code 2; exactly one error line on stderr (progress and warning log lines aside)
  naming the file and the problem; no traceback; the output folder and the inputs unchanged.
- ``C`` case error (``infer`` only): a batch isolates a case whose voxels turn out unusable and goes
  on (exit code 3, issue 6); the failure line names the file and the problem; no traceback; no file
  written to the output folder.
- ``W`` warn: exit code 0 and a warning naming the file (or case) on stderr (``check``: in its table).
- ``A`` accepted (ok): exit code 0, no traceback.
- ``N`` not applicable: the command never reads that kind of input (a checkpoint for ``folds``).

Reasons for every cell that is not ``E`` (the issue's default):

- ``manifest`` (``manifest check``) and ``folds`` validate the table: columns, ids, folds, and that
  each file exists, is not empty and has a known format. They do not open scans (a 1000-case
  manifest checks in a second); ``pancreas-seg check`` does. So content problems are ``A`` there.
- ``bom`` and ``semicolons`` are what spreadsheets write; the manifest reader accepts both by design.
- ``mr_like``: values 0-4000 could be a CT saved without its rescale intercept; the loaders warn
  "does not look like CT" and carry on (the user may know better); ``check`` lists it as a warning.
- ``infer`` ignores a manifest's labels, so label problems are ``A`` there.
- ``infer`` checks headers before it loads anything; NaN voxels and all-air scans show only when
  the voxels are read, per case, so they are ``C`` (the batch goes on with the other scans).
- ``evaluate`` gets the bad file as a *prediction*: a missing prediction is a warning by design (the
  other cases are still scored); intensity checks (air, CT-likeness) do not apply to masks, and
  predictions are files (never DICOM series).
- ``report`` with a refused or foreign checkpoint still writes the report; only the attention maps
  of that fold are left out, with a warning naming the file.
"""

from __future__ import annotations

__all__ = ["COMMANDS", "TABLE", "PROBLEM", "expected", "problem"]

COMMANDS = ("manifest", "folds", "fingerprint", "train", "cv", "infer", "evaluate", "report", "check")
E, C, W, A, N = "error", "case-error", "warn", "ok", None

# fmt: off
#                      manifest folds fingerprint train cv  infer evaluate report check
TABLE: dict[str, tuple] = {
    "missing":            (E,   E,    E,          E,    E,  E,    W,       E,     E),
    "empty":              (E,   E,    E,          E,    E,  E,    E,       E,     E),
    "truncated_gzip":     (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "wrong_magic":        (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "image_2d":           (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "image_4d":           (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "zero_axis":          (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "nan_inf":            (A,   A,    E,          E,    E,  C,    E,       E,     E),
    "all_air":            (A,   A,    E,          E,    E,  C,    N,       E,     E),
    "spacing_zero":       (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "spacing_huge":       (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "singular_affine":    (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "label_values":       (A,   A,    E,          E,    E,  A,    E,       E,     E),
    "label_grid":         (A,   A,    E,          E,    E,  A,    E,       E,     E),
    "mr_like":            (A,   A,    W,          W,    W,  W,    N,       W,     W),
    "dicom_two_series":   (A,   A,    E,          E,    E,  E,    N,       E,     E),
    "duplicate_rows":     (E,   E,    E,          E,    E,  E,    E,       E,     E),
    "traversal_case_id":  (E,   E,    E,          E,    E,  E,    E,       E,     E),
    "traversal_path":     (E,   E,    E,          E,    E,  E,    E,       E,     E),
    "bom":                (A,   A,    A,          A,    A,  A,    A,       A,     A),
    "semicolons":         (A,   A,    A,          A,    A,  A,    A,       A,     A),
    "oom_header":         (A,   A,    E,          E,    E,  E,    E,       E,     E),
    "pickle_payload":     (N,   N,    N,          E,    E,  E,    N,       W,     N),
    "pickle_plain":       (N,   N,    N,          E,    E,  E,    N,       W,     N),
    "other_architecture": (N,   N,    N,          E,    E,  E,    N,       W,     N),
}
# fmt: on

# What the message must say (a regular expression, case-insensitive) besides the file's name.
PROBLEM = {
    "missing": r"not found|no such file",
    "empty": r"empty",
    "truncated_gzip": r"truncated",
    "wrong_magic": r"cannot read the image header",
    "image_2d": r"2-D",
    "image_4d": r"4-D",
    "zero_axis": r"zero-size axis",
    "nan_inf": r"NaN or infinite",
    "all_air": r"every voxel is air",
    "spacing_zero": r"voxel size .* not plausible",
    "spacing_huge": r"voxel size .* not plausible",
    "singular_affine": r"not invertible",
    "label_values": r"unexpected values",
    "label_grid": r"grid.* differs",
    "mr_like": r"does not look like CT",
    "dicom_two_series": r"2 DICOM series",
    "duplicate_rows": r"duplicate case_id",
    "traversal_case_id": r"case_id must be usable as a file name",
    "traversal_path": r"unsupported format|not an image",
    "bom": r"",
    "semicolons": r"",
    "oom_header": r"refusing to read",
    "pickle_payload": r"refused",
    "pickle_plain": r"refused",
    "other_architecture": r"another network|do not fit",
}


# ... where one command says it in its own words.
PROBLEM_OF_CELL = {("missing", "evaluate"): r"no prediction"}


def problem(kind: str, command: str) -> str:
    """The regular expression the message of ``kind`` fed to ``command`` must match."""
    return PROBLEM_OF_CELL.get((kind, command), PROBLEM[kind])


def expected(kind: str, command: str) -> str | None:
    """The outcome the table fixes for ``kind`` fed to ``command``."""
    return TABLE[kind][COMMANDS.index(command)]
