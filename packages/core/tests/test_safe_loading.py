"""safe_loading: a crafted pickle in a run directory is refused before it is opened, and a library's
torch.load(weights_only=False) is forced to weights_only inside weights_only_loading."""

import os
import pickle

import pytest
import torch
from trainstack.checkpoint import CheckpointError
from trainstack.safe_loading import check_pickles_are_plain, numpy_array_globals, weights_only_loading


class _CreatesFile:
    """Unpickling it opens (creates) a file: the stand-in for any code a planted pickle would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_pickle_is_refused_in_one_line_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "engine").mkdir()
    torch.save({"w": torch.ones(2)}, tmp_path / "engine" / "plain.pt")
    check_pickles_are_plain(tmp_path)  # tensors and plain data pass
    torch.save({"state": _CreatesFile(marker)}, tmp_path / "engine" / "optim_states.pt")
    with pytest.raises(CheckpointError) as err:
        check_pickles_are_plain(tmp_path, ["**/*.pt"])
    msg = str(err.value)
    assert "\n" not in msg and "optim_states.pt asks to unpickle" in msg and f"{open.__module__}.open" in msg
    assert not marker.exists()


def test_only_the_given_patterns_are_scanned_and_damaged_files_are_named(tmp_path):
    (tmp_path / "notes.pt").write_bytes(b"not a torch file")
    check_pickles_are_plain(tmp_path, ["*.pth"])  # not matched: not read
    with pytest.raises(CheckpointError, match=r"cannot read .*notes\.pt"):
        check_pickles_are_plain(tmp_path, ["*.pt"])


def test_weights_only_loading_overrides_weights_only_false_and_restores_the_environment(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save(_CreatesFile(marker), tmp_path / "x.pt")
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    with weights_only_loading(), pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "x.pt", weights_only=False)
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before


def test_numpy_arrays_load_only_when_allowed(tmp_path):
    import numpy as np

    torch.save({"state": np.arange(3, dtype=np.uint32)}, tmp_path / "rng.pth")
    with pytest.raises(CheckpointError, match="asks to unpickle"):
        check_pickles_are_plain(tmp_path, ["*.pth"])
    check_pickles_are_plain(tmp_path, ["*.pth"], numpy_array_globals())
    with weights_only_loading(numpy_array_globals()):
        assert torch.load(tmp_path / "rng.pth", weights_only=False)["state"].tolist() == [0, 1, 2]


def test_deepspeed_state_classes_are_allowed(tmp_path):
    zero_config = pytest.importorskip("deepspeed.runtime.zero.config")
    torch.save({"zero_stage": zero_config.ZeroStageEnum.gradients}, tmp_path / "optim_states.pt")
    check_pickles_are_plain(tmp_path)
    with weights_only_loading():
        assert torch.load(tmp_path / "optim_states.pt", weights_only=False)["zero_stage"] == 2
