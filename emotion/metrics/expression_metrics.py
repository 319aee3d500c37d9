"""Multi-class expression metrics as one `evaluate` module: accuracy, balanced accuracy, macro / weighted F1,
per-class precision / recall / F1 / support and the confusion matrix (rows = true class)."""
import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy, balanced accuracy, per-class precision/recall/F1 and confusion matrix for single-label classification."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids.
    references: true class ids.
    num_classes: number of classes (classes absent from both get zero rows and columns).
Returns:
    accuracy, balanced_accuracy (mean recall over classes present in references), macro_f1 and weighted_f1
    (over classes present in references), precision / recall / f1 / support (lists per class), confusion_matrix.
"""


class ExpressionMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_classes=8):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(matrix, (references, predictions), 1)
        support = matrix.sum(axis=1)
        predicted = matrix.sum(axis=0)
        hits = np.diag(matrix)
        precision = np.divide(hits, predicted, out=np.zeros(num_classes), where=predicted > 0)
        recall = np.divide(hits, support, out=np.zeros(num_classes), where=support > 0)
        denominator = precision + recall
        f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
        present = support > 0
        total = int(support.sum())
        return {
            "accuracy": float(hits.sum() / total) if total else 0.0,
            "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
            "confusion_matrix": matrix.tolist(),
        }
