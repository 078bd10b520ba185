import json
import warnings

import pytest
from hlbd.data import HLBDError, build_pairs, bundled_sample_path, read_hlbd

RECORD = {"concept": "下雨", "level_1": {"字卡": "雨", "emoji": "🌧️"}, "level_2": {"短语": "下雨了"},
          "level_4": {"拼音": "xià yǔ"}, "level_5": {"英文": "It's raining"}, "level_6": {"中文": "下雨了。"},
          "level_7": {"日文": "雨です"}, "level_8": {"韩文": "비가 와요"}}


def _txt(tmp_path, body, name="d.txt"):
    p = tmp_path / name
    p.write_text("HLBD header\nprose line\n\nsamples = " + body, encoding="utf-8")
    return p


def test_bundled_sample_reads_with_the_misspelled_key():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        concepts = read_hlbd(bundled_sample_path())
    assert len(concepts) == 12
    assert any("韩문" in str(x.message) for x in w)
    pairs = build_pairs(concepts)
    assert len(pairs) == 72
    assert pairs[0].source.startswith("<emoji>") and pairs[0].target == concepts[0].fields["chinese"]


def test_real_v1_gives_600_pairs_and_warns_about_the_dict_value(v1_path):
    with pytest.warns(UserWarning, match="节能环保"):
        concepts = read_hlbd(v1_path)
    pairs = build_pairs(concepts)
    assert len(concepts) == 100 and len(pairs) == 600
    korean = [p for p in pairs if p.concept == "节能环保" and p.source_field == "korean"]
    assert korean[0].source == "<ko>에너지 절약과 환경 보호하자"


def test_json_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([RECORD]), encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(json.dumps(RECORD) + "\n\n" + json.dumps(RECORD) + "\n", encoding="utf-8")
    assert len(build_pairs(read_hlbd(tmp_path / "a.json"))) == 6
    assert len(read_hlbd(tmp_path / "a.jsonl")) == 2


def test_pair_options(tmp_path):
    c = read_hlbd(_txt(tmp_path, json.dumps([RECORD])))
    pairs = build_pairs(c, sources=["english"], targets=["chinese", "japanese"], language_tags=True)
    assert [p.source for p in pairs] == ["<zh><en>It's raining", "<ja><en>It's raining"]
    assert build_pairs(c, sources=["pinyin"], language_tags=False)[0].source == "xià yǔ"
    with pytest.raises(HLBDError, match="unknown field"):
        build_pairs(c, sources=["klingon"])


@pytest.mark.parametrize("body,match", [
    (json.dumps([RECORD], ensure_ascii=False, indent=2)[:-10], r"d\.txt:\d+: the samples JSON list is truncated"),
    ("[]", "the samples list is empty"),
    (json.dumps([{**RECORD, "level_6": {"短语": "x"}}]), "concept '下雨' .*has no level_6.中文"),
    ("[1, 2]", "sample #1 is a int"),
    ('[{"concept": "a", "level_1": {"emoji": "x"},}]', r"d\.txt:4: invalid JSON"),
])
def test_malformed_files_fail_in_one_line(tmp_path, body, match):
    with pytest.raises(HLBDError, match=match) as e:
        read_hlbd(_txt(tmp_path, body))
    assert "\n" not in str(e.value)


def test_missing_file_and_missing_marker(tmp_path):
    with pytest.raises(HLBDError, match="file not found"):
        read_hlbd(tmp_path / "nope.txt")
    (tmp_path / "x.txt").write_text("just prose\n", encoding="utf-8")
    with pytest.raises(HLBDError, match="no 'samples = \\[' line"):
        read_hlbd(tmp_path / "x.txt")
