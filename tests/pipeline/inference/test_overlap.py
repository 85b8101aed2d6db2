"""Overlapped batch inference: the same masks and failures as the serial loop, steps really overlap."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from models import build_model
from pipeline.core.errors import ConfigError, OutputError
from pipeline.inference.batch import predict_cases
from pipeline.inference.overlap import overlapped, resolve_workers
from pipeline.inference.predictor import Predictor
from pipeline.synthetic.phantom import make_phantom, save_phantom
from tests.conftest import tiny_config

INFER = {"infer__roi_size": "[32,32,32]", "infer__sw_batch_size": 4}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[dict]:
    """Five cases: c is not a scan (fails on loading), the others are phantoms of different shapes."""
    root = tmp_path_factory.mktemp("cohort")
    records = []
    for i, name in enumerate("abcde"):
        image = root / f"{name}.nii.gz"
        if name == "c":
            image.write_bytes(b"this is not a scan")
        else:
            ph = make_phantom(10 + i, shape=(40 + 4 * i, 44, 24), spacing=(1.0, 1.0, 2.5))
            save_phantom(ph, image, root / "labels" / image.name)
        records.append({"case_id": name, "subject_id": name, "image": str(image)})
    return records


def _predictor(workers: int) -> Predictor:
    cfg = tiny_config(**INFER, infer__workers=workers, infer__save_probabilities="true")
    torch.manual_seed(0)
    return Predictor([build_model(cfg.model)], cfg)


def _masks(folder) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("?.nii.gz"))}


def test_overlapped_batch_equals_serial_and_survives_failing_cases(tmp_path, cohort, monkeypatch):
    serial = predict_cases(_predictor(0), cohort, tmp_path / "serial")
    overlapped_predictor = _predictor(2)
    finish = overlapped_predictor.finish

    def finish_failing_on_d(pending):  # a failure behind the network, in a writer thread
        if pending.data["case_id"] == "d":
            raise RuntimeError("inversion broke")
        return finish(pending)

    monkeypatch.setattr(overlapped_predictor, "finish", finish_failing_on_d)
    overlap = predict_cases(overlapped_predictor, cohort, tmp_path / "overlap")

    assert list(serial["failed"]) == ["c"] and "ImageError" in serial["failed"]["c"]
    assert list(overlap["failed"]) == ["c", "d"] and "inversion broke" in overlap["failed"]["d"]
    assert [p.name for p in overlap["written"]] == ["a.nii.gz", "b.nii.gz", "e.nii.gz"]
    a, b = _masks(tmp_path / "serial"), _masks(tmp_path / "overlap")
    assert sorted(a) == ["a.nii.gz", "b.nii.gz", "d.nii.gz", "e.nii.gz"]
    assert sorted(b) == ["a.nii.gz", "b.nii.gz", "e.nii.gz"]
    for name in b:
        assert np.array_equal(a[name], b[name]), name
    probs = {p.name: np.asarray(nib.load(p).dataobj) for p in (tmp_path / "overlap").glob("*_prob.nii.gz")}
    assert sorted(probs) == ["a_prob.nii.gz", "b_prob.nii.gz", "e_prob.nii.gz"]
    for name, p in probs.items():  # bit for bit: the same steps on the same data, only in other threads
        assert np.array_equal(p, np.asarray(nib.load(tmp_path / "serial" / name).dataobj)), name
    timings = pd.read_csv(tmp_path / "overlap" / "timings.csv", dtype={"case_id": str})
    assert list(timings["case_id"]) == ["a", "b", "e"]  # input order, though threads finish in any order
    assert (timings["total_s"] >= timings["network_s"]).all()
    assert not (tmp_path / "overlap" / ".records").exists() and not list(
        (tmp_path / "overlap").glob(".*tmp*")
    )


def test_overlapped_loads_ahead_and_writes_behind_the_network():
    started = {i: threading.Event() for i in range(5)}
    finishing = {i: threading.Event() for i in range(5)}
    seen = []

    def load(i):
        started[i].set()
        return i

    def run(i, x):
        # the next case is loaded while this one "runs", and the previous is written meanwhile;
        # waits with a timeout: a serial loop would fail these, not hang
        assert i == 4 or started[i + 1].wait(10)
        assert i == 0 or finishing[i - 1].wait(10)
        return None if i == 2 else x * 10

    def finish(i, x):
        finishing[i].set()
        seen.append(i)
        return x

    assert list(overlapped(range(5), load, run, finish, workers=1)) == [0, 10, None, 30, 40]
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_an_error_that_escapes_a_step_stops_the_batch():
    ran = []

    def finish(i, x):
        if i == 1:
            raise OutputError("out: disk full")
        return x

    with pytest.raises(OutputError, match="disk full"):
        list(overlapped(range(50), lambda i: i, lambda i, x: ran.append(i) or x, finish, workers=2))
    assert len(ran) < 10  # stopped soon after, not at the end of the batch


def test_workers_by_core_count_and_checked_at_load():
    assert resolve_workers(-1, cores=1) == 0 and resolve_workers(-1, cores=2) == 1
    assert resolve_workers(-1, cores=8) == 2 and resolve_workers(0, cores=64) == 0
    assert resolve_workers(-1, cores=64) == 4 and resolve_workers(3, cores=2) == 3
    assert resolve_workers(-1) >= 0
    with pytest.raises(ConfigError, match="infer.workers"):
        tiny_config(infer__workers=-2)
