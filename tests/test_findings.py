"""The findings registry: names, lesion sizes, atrous rates and max-pooling."""

import pytest

from fundax import findings


def test_registry_order_and_names():
    assert findings.FINDINGS == ("hemorrhage", "hard_exudate", "cotton_wool_patch", "drusen",
                                 "retinal_pigmentary_change", "macular_hole", "membrane", "rnfl_defect")
    assert set(findings.PAPER_FINDINGS) <= set(findings.FINDINGS) and len(findings.PAPER_FINDINGS) == 7


def test_paper_ties_small_lesions_to_max_pooling_and_two_rates():
    small = {"hemorrhage", "hard_exudate", "cotton_wool_patch", "drusen", "retinal_pigmentary_change"}
    for name in findings.FINDINGS:
        f = findings.get_finding(name)
        assert f.max_pool_before_gap == (name in small)
        assert f.atrous_rates == {"small": (1, 2), "medium": (1, 2, 4), "large": (1, 2, 4, 8)}[f.lesion_size]
    assert findings.get_finding("rnfl_defect").atrous_rates == (1, 2, 4, 8)
    assert findings.get_finding("macular_hole").atrous_rates == (1, 2, 4)
    assert findings.get_finding("membrane").display_name == "Membrane"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(findings.UnknownFindingError, match="unknown finding 'glaucoma'; valid findings are: hemorrhage, "):
        findings.get_finding("glaucoma")
    with pytest.raises(ValueError, match="rnfl_defect"):
        findings.get_finding(None)
    assert findings.finding_index("rnfl_defect") == 7
