"""FG-OVD files are found under the data root by the names they are released under."""
import pytest

from fgclip.eval.common import DataError
from fgclip.eval.fgovd import find_fgovd_files

# FG-CLIP's data/fgovd/ (REFERENCE section 4) and the FG-OVD benchmark's benchmarks/ folder
FGCLIP_RELEASE = {"hard": "h_attributes_llava.jsonl", "medium": "m_attributes_llava.jsonl",
                  "easy": "e_attributes_llava.jsonl", "trivial": "shuffle_negatives_llava.jsonl"}
FGOVD_BENCHMARK = {"hard": "1_attributes.json", "medium": "2_attributes.json", "easy": "3_attributes.json",
                   "trivial": "shuffle_negatives.json", "color": "color.json", "material": "material.json",
                   "pattern": "pattern.json", "transparency": "transparency.json"}


@pytest.mark.parametrize("release", [FGCLIP_RELEASE, FGOVD_BENCHMARK])
def test_released_file_names_are_found(release, tmp_path):
    for name in release.values():
        (tmp_path / name).write_text("")
    (tmp_path / "README.md").write_text("")
    assert {subset: path.name for subset, path in find_fgovd_files(tmp_path).items()} == release


def test_two_files_for_one_subset_are_refused(tmp_path):
    (tmp_path / "h_attributes_llava.jsonl").write_text("")
    (tmp_path / "1_attributes.json").write_text("")
    with pytest.raises(DataError, match=r"several files for FG-OVD subset 'hard': \['h_attributes_llava\.jsonl', "
                                        r"'1_attributes\.json'\]"):
        find_fgovd_files(tmp_path)
