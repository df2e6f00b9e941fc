"""Evaluation: accuracy, per-person and macro precision/recall/F1, a confusion matrix as JSON and PNG."""

from __future__ import annotations

import io

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

NO_FACE = "(no face)"


def evaluate(truth: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Metrics of predicted against truth. Predictions outside labels (unknown, no face) count as errors.

    Returns a JSON-ready dict with accuracy, macro precision/recall/F1, a per-person table and the
    confusion matrix (rows: truth, columns: prediction; the extra columns hold unknown and no-face).
    """
    extra = sorted(set(predicted) - set(labels))
    columns = list(labels) + extra
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(truth, predicted, labels=labels, average="macro", zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=columns)[: len(labels)]
    return {
        "images": len(truth),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "rejected_as_unknown_or_no_face": int(sum(p not in labels for p in predicted)),
        "per_person": [
            {"person": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        ],
        "confusion_matrix": {"rows": list(labels), "columns": columns, "counts": matrix.tolist()},
    }


def confusion_matrix_png(confusion: dict) -> bytes:
    """Render a confusion matrix (as returned in evaluate()['confusion_matrix']) as PNG bytes,
    normalised per true person so small and large classes read alike."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion["counts"], dtype=float)
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    rows, columns = confusion["rows"], confusion["columns"]
    side = max(6.0, 0.22 * len(columns) + 3)
    fig, ax = plt.subplots(figsize=(side, side * len(rows) / max(len(columns), 1) + 1))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), [c.replace("_", " ") for c in columns], rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), [r.replace("_", " ") for r in rows], fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (share of each person's photos)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
