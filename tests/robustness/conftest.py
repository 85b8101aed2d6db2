"""Fixtures of the robustness suite: one session-wide set of tiny good and bad inputs."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_config
from tests.robustness.inputs import World, build_world


def robust_config(**overrides: object):
    """The tiny config on 16^3 volumes: 4 mm grid, 16^3 patches, one epoch, float32 (deterministic)."""
    values = {
        "data__target_spacing": "[4.0,4.0,4.0]",
        "data__patch_size": "[16,16,16]",
        "infer__roi_size": "[16,16,16]",
        "train__epochs": 1,
        "perf__bf16": "false",
        "perf__channels_last": "false",
        # one thread: on a shared 2-core machine, spinning OpenMP workers make tiny runs 10x slower
        "perf__threads": 1,
    }
    values.update(overrides)
    return tiny_config(**values)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """The good dataset, a config, a checkpoint and one file per kind of bad input (built once)."""
    return build_world(tmp_path_factory.mktemp("robust_world"), robust_config())


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each CLI run in a test is a fresh process as far as once-per-process warnings and torch's
    thread count (``perf.threads`` sets it) go."""
    import torch

    from transforms import validate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as perf.threads=1 in the config: tiny volumes, a shared machine
    validate._warned.clear()
    yield
    validate._warned.clear()
    torch.set_num_threads(threads)
