import numpy as np
import pytest

from emotion.explain import (REGION_LAYOUT, SUPPORT_OCCLUSION, agreement_by_class, baseline_weights, explain, occluded_copies,
                             occlusion_weights, region_weights, top_region)
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


def test_lifts_are_read_against_the_neutral_face_baseline():
    """A model that always looks at the nose: on a face where the mouth gains attention, the mouth is what changed."""
    prior = 0.7 * attention_on("nose") + 0.3 * np.full((12, 12), 1 / 144)
    face = 0.5 * attention_on("nose") + 0.3 * attention_on("mouth") + 0.2 * np.full((12, 12), 1 / 144)
    baseline = baseline_weights(prior.tolist())
    assert top_region(region_weights(face)) == "nose"  # plain lift: the model's habit
    relative = region_weights(face, baseline)
    assert top_region(relative) == "mouth" and relative["nose"] < 1.0
    assert region_weights(prior, baseline) == pytest.approx(dict.fromkeys(FACE_REGIONS, 1.0))
    assert baseline_weights(None) is None
    why = explain(probs("happy"), face, baseline=baseline)
    assert why.status == "supported" and why.phrase.startswith("Lip Corners Up") and why.top_region == "mouth"
    assert explain(probs("happy"), face).phrase != why.phrase  # without the baseline, the nose habit decides


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


def _lifts(**high: float) -> dict[str, float]:
    return {region: high.get(region, 0.5) for region in FACE_REGIONS}


def test_agreement_by_class_counts_hits_chance_and_contrast_and_skips_neutral():
    anger = ["brows", "eyes", "mouth", "jaw"]
    table = agreement_by_class(
        [_lifts(brows=3.0), _lifts(nose=3.0, mouth=2.0, brows=2.0), _lifts(nose=2.0), _lifts(mouth=2.0), _lifts(eyes=2.0)],
        [CLASS_TO_ID["anger"], CLASS_TO_ID["anger"], CLASS_TO_ID["happy"], CLASS_TO_ID["contempt"], CLASS_TO_ID["neutral"]],
        [anger, anger, ["eyes", "cheeks", "mouth"], ["mouth"], []],
    )
    # anger: top region brows (hit) then nose (miss); changed regions average 1.125 vs 0.5, then 1.25 vs 1.75.
    assert table["anger"] == {"agreement": 0.5, "chance": pytest.approx(4 / 6), "contrast": 0.5, "faces": 2}
    assert table["happy"]["agreement"] == 0.0 and table["happy"]["contrast"] == 0.0
    assert table["contempt"] == {"agreement": 1.0, "chance": pytest.approx(1 / 6), "contrast": 1.0, "faces": 1}
    assert table["neutral"] is None and table["sad"] is None
    assert table["overall"]["agreement"] == pytest.approx(2 / 4)
    assert table["overall"]["chance"] == pytest.approx((4 / 6 + 4 / 6 + 3 / 6 + 1 / 6) / 4)
    assert table["overall"]["faces"] == 4


def test_occluded_copies_hide_one_region_each_and_nothing_else():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    original = crop.copy()
    copies = occluded_copies(crop)
    assert (crop == original).all()  # the input itself is left as it was
    assert len(copies) == len(FACE_REGIONS)
    for region, copy in zip(FACE_REGIONS, copies):
        changed = (copy != crop).any(axis=2)
        inside = np.zeros((80, 80), bool)
        for x0, y0, x1, y1 in REGION_LAYOUT[region]:
            inside[round(y0 * 80):round(y1 * 80), round(x0 * 80):round(x1 * 80)] = True
        assert not changed[~inside].any(), region  # only the region's pixels move
        assert changed[inside].mean() > 0.9, region  # and the noise inside is blurred away


def test_occlusion_weights_are_the_predicted_class_probability_ratio():
    p = probs("anger", 0.8)
    occluded = np.tile(p, (len(FACE_REGIONS), 1))
    occluded[FACE_REGIONS.index("brows"), CLASS_TO_ID["anger"]] = 0.2  # hiding the brows takes anger from 0.8 to 0.2
    occluded[FACE_REGIONS.index("nose"), CLASS_TO_ID["anger"]] = 0.9   # hiding the nose helps it a little
    weights = occlusion_weights(p, occluded)
    assert list(weights) == list(FACE_REGIONS)
    assert weights["brows"] == pytest.approx(4.0)
    assert weights["nose"] == pytest.approx(0.8 / 0.9)
    assert weights["mouth"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="occluded probabilities"):
        occlusion_weights(p, occluded[:3])


def test_explanation_from_occlusion_evidence_names_only_regions_that_carry_the_decision():
    evidence = dict.fromkeys(FACE_REGIONS, 1.0) | {"brows": 3.0, "eyes": SUPPORT_OCCLUSION - 0.01}
    why = explain(probs("anger"), np.full((5, 5), 1 / 25), evidence=evidence)
    assert why.source == "occlusion" and why.status == "supported" and why.top_region == "brows"
    assert why.phrase == "Brows Down -> Anger"  # eyes stay below the support bar: Lids Tight is not named
    flat = explain(probs("anger"), attention_on("brows"), evidence=dict.fromkeys(FACE_REGIONS, 1.0) | {"nose": 1.5})
    assert flat.status == "unsupported"  # the attention map is not read once evidence is given
    assert flat.phrase == "Anger, but the decision rests on the nose, not the brows/eyes/mouth"
    assert explain(probs("anger"), attention_on("brows")).source == "attention"
