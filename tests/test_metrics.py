import numpy as np
import pytest

from emotion.evaluation import compute_metrics
from emotion.labels import CLASS_NAMES


def test_metrics_match_hand_computed_values():
    # 10 samples over classes 0 (neutral), 1 (happy), 6 (anger); other classes absent.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 6, 6, 6])
    predicted = np.array([0, 0, 0, 1, 1, 1, 6, 6, 6, 0])
    m = compute_metrics(labels, predicted, list(CLASS_NAMES))
    assert m["num_samples"] == 10
    assert m["accuracy"] == pytest.approx(7 / 10)
    # recall: neutral 3/4, happy 2/3, anger 2/3
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    # precision: neutral 3/4, happy 2/3, anger 2/3 -> F1 equal to them
    assert m["per_class"]["neutral"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert m["per_class"]["happy"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["anger"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["contempt"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((0.75 * 4 + 2 / 3 * 3 + 2 / 3 * 3) / 10)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (8, 8) and cm.sum() == 10
    assert cm[0, 0] == 3 and cm[0, 1] == 1 and cm[1, 6] == 1 and cm[6, 0] == 1 and cm[6, 6] == 2
