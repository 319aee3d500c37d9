import numpy as np
import pytest

from emotion.explain import REGION_LAYOUT, agreement_by_class, explain, region_weights, top_region
from emotion.labels import CLASS_TO_ID, FACE_REGIONS, NUM_CLASSES


def attention_on(region: str, grid: int = 12) -> np.ndarray:
    """A map with all its mass on the cells inside the region's first rectangle."""
    x0, y0, x1, y1 = REGION_LAYOUT[region][0]
    centres = (np.arange(grid) + 0.5) / grid
    att = np.outer((centres > y0) & (centres < y1), (centres > x0) & (centres < x1)).astype(float)
    return att / att.sum()


def probs(label: str, p: float = 0.8) -> np.ndarray:
    out = np.full(NUM_CLASSES, (1 - p) / (NUM_CLASSES - 1))
    out[CLASS_TO_ID[label]] = p
    return out


def test_uniform_attention_gives_lift_one_everywhere():
    weights = region_weights(np.full((6, 6), 1 / 36))
    assert list(weights) == list(FACE_REGIONS)
    assert all(w == pytest.approx(1.0) for w in weights.values())


@pytest.mark.parametrize("region", FACE_REGIONS)
def test_attention_on_a_region_makes_it_the_top_region(region):
    weights = region_weights(attention_on(region))
    assert top_region(weights) == region
    assert weights[region] > 2.0


def test_anger_with_brow_attention_names_the_brow_action():
    why = explain(probs("anger"), attention_on("brows"))
    assert why.status == "supported" and why.supported
    assert why.phrase.startswith("Brows Down") and why.phrase.endswith("-> Anger")
    assert why.actions[0] == "AU4 brow lowerer"
    assert why.top_region == "brows"


def test_unsupported_attention_is_said_not_invented():
    why = explain(probs("happy"), attention_on("brows"))
    assert why.status == "unsupported" and not why.supported
    assert why.phrase == "Happy, but attention is on the brows, not the cheeks/mouth"
    assert why.actions == []


def test_low_confidence_is_said():
    why = explain(probs("fear", 0.3), attention_on("eyes"))
    assert why.status == "low_confidence"
    assert why.phrase == "Unsure: maybe Fear (30%)"


def test_neutral_and_one_sided_contempt():
    assert explain(probs("neutral"), attention_on("mouth")).phrase == "No facial action -> Neutral"
    why = explain(probs("contempt"), attention_on("mouth"))
    assert why.phrase == "One-Sided Lip Corners Up + One-Sided Dimple -> Contempt"


def test_surprise_orders_actions_by_attention():
    att = 0.7 * attention_on("jaw") + 0.3 * attention_on("eyes")
    why = explain(probs("surprise"), att)
    assert why.phrase == "Jaw Dropped + Eyes Wide -> Surprise"


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        explain(np.ones(3) / 3, np.ones((4, 4)))
    with pytest.raises(ValueError):
        region_weights(np.ones(16))


def test_agreement_by_class_counts_hits_and_skips_neutral():
    table = agreement_by_class(
        ["brows", "mouth", "nose", "mouth", "eyes"],
        [CLASS_TO_ID["anger"], CLASS_TO_ID["anger"], CLASS_TO_ID["happy"], CLASS_TO_ID["contempt"], CLASS_TO_ID["neutral"]],
        [["brows", "eyes", "mouth", "jaw"], ["brows", "eyes", "mouth", "jaw"], ["eyes", "cheeks", "mouth"], ["mouth"], []],
    )
    assert table["anger"] == 1.0 and table["happy"] == 0.0 and table["contempt"] == 1.0
    assert table["neutral"] is None and table["sad"] is None
    assert table["overall"] == pytest.approx(3 / 4)
