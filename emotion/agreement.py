"""How well explanations point where they should: measurements for the benchmarks and tests, not the face pipeline.

`synthetic_agreement`: against the regions the synthetic generator changed; `prototype_agreement`: on real faces,
against the facial regions where each class's prototype actions show (explain.prototype_regions).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from emotion.explain import agreement_by_class, prototype_regions, top_region
from emotion.faces.predict import Predictor
from emotion.synthetic import render_face


def synthetic_agreement(predictor: Predictor, per_class: int = 25, seed: int = 0) -> dict[str, dict[str, float] | None]:
    """Per class, how well the explanations point at the regions the synthetic generator changed (explain.agreement_by_class)."""
    size = int(predictor.runner.config["image_size"])
    weights, labels, truth = [], [], []
    for label in range(len(predictor.class_names)):
        for i in range(per_class):
            rgb, regions, _ = render_face(label, np.random.default_rng([seed, 99, label, i]), size)
            weights.append(predictor.classify_crops([rgb[:, :, ::-1]])[0].explanation.region_weights)
            labels.append(label)
            truth.append(regions)
    return agreement_by_class(weights, labels, truth)


def prototype_agreement(predictor: Predictor, crops: Sequence[np.ndarray], labels: Sequence[int], batch_size: int = 64
                        ) -> tuple[dict[str, dict[str, float] | None], dict[str, dict[str, int]]]:
    """Real faces: per true class, how often the explanation's top region is one where the class's prototype actions
    show (explain.prototype_regions), over the faces the model gets right (a wrong label explains another class);
    and per class, how many of those faces each region tops. `crops`: BGR face crops in the canonical layout."""
    weights, kept, tops = [], [], {}
    for start in range(0, len(crops), batch_size):
        results = predictor.classify_crops(list(crops[start:start + batch_size]))
        for result, label in zip(results, labels[start:start + batch_size]):
            if result.label == predictor.class_names[int(label)]:
                weights.append(result.explanation.region_weights)
                kept.append(int(label))
                tops.setdefault(result.label, Counter())[top_region(weights[-1])] += 1
    table = agreement_by_class(weights, kept, [prototype_regions(predictor.class_names[label]) for label in kept])
    return table, {name: dict(count.most_common()) for name, count in tops.items()}
