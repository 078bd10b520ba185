"""trainstack.hub: a hub model or dataset that cannot be had is one line naming it and what to do."""

import pytest
from trainstack.config import ConfigError
from trainstack.hub import HubUnavailable, loading


def test_offline_model_names_it_and_what_to_do(monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailable) as e, loading("org/no-such-model-here", key="model.name_or_path"):
        transformers.AutoConfig.from_pretrained("org/no-such-model-here")
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in msg
    assert msg.startswith("model 'org/no-such-model-here' is not in the local Hugging Face cache and the hub is "
                          "offline (HF_HUB_OFFLINE=1)")
    assert "model.name_or_path=PATH" in msg and "hf download org/no-such-model-here" in msg


def test_offline_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(HubUnavailable) as e, loading("wmt16", what="dataset", key="--dataset_name"):
        datasets.load_dataset("wmt16", "ro-en", split="train")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("dataset 'wmt16' is not in the local Hugging Face cache")
    assert "pass a local file (--dataset_name=PATH)" in msg and "--repo-type dataset" in msg


def test_missing_reader_package_says_what_to_install():
    with pytest.raises(HubUnavailable) as e, loading("wmt19", what="dataset", key="data.train", install="mt-nllb[hub]"):
        raise ModuleNotFoundError("No module named 'datasets'", name="datasets")
    assert str(e.value) == ("dataset 'wmt19' is read from the Hugging Face hub through the datasets package, which is "
                            "not installed: pip install 'mt-nllb[hub]', or pass local files instead (data.train=...)")


def test_online_failure_and_local_paths(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(HubUnavailable, match=r"^model 'org/x': the Hugging Face hub did not provide it \(boom\); "
                                             r"check the name and the network"):
        with loading("org/x"):
            raise OSError("boom\nsecond line")
    with pytest.raises(HubUnavailable, match=f"^tokenizer {tmp_path}: cannot load it from this local path"):
        with loading(str(tmp_path), what="tokenizer"):
            raise OSError("no tokenizer.json")


def test_other_errors_pass_through():
    with pytest.raises(KeyError), loading("org/x"):
        raise KeyError("a bug, not the hub")
