from emotion.labels import CLASS_NAMES, CLASS_TO_ID, NUM_CLASSES, canonical_label


def test_affectnet_order():
    assert CLASS_NAMES == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
    assert NUM_CLASSES == 8
    assert [CLASS_TO_ID[n] for n in CLASS_NAMES] == list(range(8))


def test_aliases_map_to_canonical_ids():
    assert canonical_label("Happiness") == 1
    assert canonical_label("sadness") == 2
    assert canonical_label("Surprised") == 3
    assert canonical_label("fearful") == 4
    assert canonical_label("disgusted") == 5
    assert canonical_label("ANGRY") == 6
    assert canonical_label("neutrality") == 0
    assert canonical_label("contempt") == 7
    assert canonical_label("bored") is None
