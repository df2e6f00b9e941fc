"""Evaluation: accuracy, top-5, per-person, macro and weighted precision/recall/F1, the confusion matrix,
open-set figures (strangers rejected, enrolled people recognised) and the plots of all of these.

Every accuracy (a share of photos answered right) carries a 95% Wilson score interval beside it, so a
reader can tell when two figures are within noise of each other: on 100 photos, 95% correct means
anything from about 89% to 98%. Wilson rather than the normal approximation because it stays inside
[0, 1] and is honest at 100% correct, where the normal interval collapses to a point.

Figures are drawn on matplotlib `Figure` objects rather than through pyplot: pyplot keeps every figure in
global state until it is closed, which leaks in long-lived workers; a bare Figure is freed with its last
reference and always renders with Agg, so no display or backend setting is needed.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

if TYPE_CHECKING:
    from pipeline.quality import Quality

NO_FACE = "(no face)"
TOP_K = 5
OPEN_SET_GRID_POINTS = 50
# Cells of the confusion matrix are annotated with their share only while the numbers still fit.
ANNOTATE_UP_TO_PEOPLE = 25
CONFIDENCE = 0.95
INTERVAL_METHOD = "95% Wilson score interval"
# Face-size slices of the reports, by interocular distance in pixels: fixed, so that reports compare. The
# first is below the quality rule's too_small (pipeline.quality.MIN_INTEROCULAR_PX).
FACE_SIZE_EDGES = (0, 20, 30, 40, 60, 100)


def wilson_interval(successes: int, trials: int) -> list[float] | None:
    """The 95% Wilson score interval [low, high] of a share successes / trials; None without trials."""
    if trials == 0:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="wilson")
    return [float(interval.low), float(interval.high)]


def evaluate(truth: list[str], predicted: list[str], labels: list[str], scores: np.ndarray | None = None) -> dict:
    """Metrics of predicted against truth. Predictions outside labels (unknown, no face) count as errors.

    scores, when given, are the model's class scores: one row per photo, aligned with truth, one column
    per label in the order of labels. A row of NaN stands for a photo without a usable face, which
    counts as a miss for top-5 as it does for accuracy.

    Returns a JSON-ready dict with accuracy and top-5 accuracy (None without scores), each with its
    95% Wilson interval (`accuracy_interval`, `top5_accuracy_interval`: [low, high]), macro and
    support-weighted precision/recall/F1, a per-person table and the confusion matrix (rows: truth,
    columns: prediction; the extra columns hold unknown and no-face).
    """
    extra = sorted(set(predicted) - set(labels))
    columns = list(labels) + extra
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(truth, predicted, labels=labels, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(truth, predicted, labels=labels, average="weighted", zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=columns)[: len(labels)]
    correct = sum(t == p for t, p in zip(truth, predicted))
    top5_hits = None if scores is None else top_k_hits(truth, labels, scores, TOP_K)
    return {
        "images": len(truth),
        "accuracy": correct / len(truth) if truth else 0.0,
        "accuracy_interval": wilson_interval(correct, len(truth)),
        "top5_accuracy": None if top5_hits is None else top5_hits / max(len(truth), 1),
        "top5_accuracy_interval": None if top5_hits is None else wilson_interval(top5_hits, len(truth)),
        "interval_method": INTERVAL_METHOD,
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "weighted_precision": float(weighted[0]),
        "weighted_recall": float(weighted[1]),
        "weighted_f1": float(weighted[2]),
        "rejected_as_unknown_or_no_face": int(sum(p not in labels for p in predicted)),
        "per_person": [
            {"person": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        ],
        "confusion_matrix": {"rows": list(labels), "columns": columns, "counts": matrix.tolist()},
    }


def top_k_accuracy(truth: list[str], labels: list[str], scores: np.ndarray, k: int) -> float:
    """Share of photos whose true person is among the k highest class scores (see top_k_hits)."""
    return top_k_hits(truth, labels, scores, k) / max(len(truth), 1)


def top_k_hits(truth: list[str], labels: list[str], scores: np.ndarray, k: int) -> int:
    """How many photos have their true person among the k highest class scores.

    A NaN row (no face) or a true person outside labels is a miss; ties are resolved in the true
    person's favour, since its rank is the number of people scored strictly higher.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(truth), len(labels)):
        raise ValueError(f"scores must have shape (photos, people) = {(len(truth), len(labels))}, got {scores.shape}")
    index = {label: i for i, label in enumerate(labels)}
    hits = 0
    for row, person in zip(scores, truth):
        if person in index and not np.isnan(row).any():
            hits += int((row > row[index[person]]).sum() < k)
    return hits


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def display_name(label: str) -> str:
    """A person's folder name as people write it (LFW uses underscores)."""
    return label.replace("_", " ")


def plot_text(text: str) -> str:
    """Text that matplotlib draws as written. It reads what lies between two `$` as mathematics (`$x$`
    in italics; `$$` or a malformed formula stops the figure with an error), and a label may hold any
    character, so each `$` is escaped."""
    return text.replace("$", r"\$")


def confusion_matrix_png(confusion: dict) -> bytes:
    """Render a confusion matrix (as returned in evaluate()['confusion_matrix']) as PNG bytes.

    Each row is normalised per true person so small and large classes read alike; its label carries the
    person's photo count. People are ordered by name, the same order down the rows and across the
    columns, so a person is easy to find and correct answers sit on the diagonal. Photos answered with
    unknown or no face get their own columns at the right (one empty `unknown / no face` column when
    there were none). Figure and font sizes grow with the number of people so 60 or more stay legible.
    """
    rows = list(confusion["rows"])
    counts = np.asarray(confusion["counts"], dtype=float).reshape(len(rows), len(confusion["columns"]))
    column_index = {column: i for i, column in enumerate(confusion["columns"])}
    people_set = set(rows)
    rejected = [c for c in confusion["columns"] if c not in people_set]
    order = sorted(rows, key=str.casefold)
    in_order = [rows.index(r) for r in order]
    people = counts[np.ix_(in_order, [column_index[r] for r in order])]
    if rejected:
        others = counts[np.ix_(in_order, [column_index[c] for c in rejected])]
    else:
        rejected, others = ["unknown / no face"], np.zeros((len(order), 1))
    table = np.hstack([people, others])
    support = table.sum(axis=1)
    shares = table / np.maximum(support, 1)[:, None]

    cell = max(0.2, 6.0 / max(len(order), 1))  # inches per cell: 6 inches of matrix for few people
    font = min(10.0, cell * 72 * 0.55)  # points; about half a cell high
    margin = 0.09 * font + 0.5  # inches for the name labels, which scale with the font
    width = cell * table.shape[1] + margin + 1.6
    height = cell * table.shape[0] + margin + 0.8
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="equal")
    ax.set_xticks(range(table.shape[1]), [plot_text(display_name(c)) for c in order + rejected], rotation=90,
                  fontsize=font)
    ax.set_yticks(range(len(order)), [plot_text(f"{display_name(r)} ({int(n)})") for r, n in zip(order, support)],
                  fontsize=font)
    ax.axvline(len(order) - 0.5, color="black", linewidth=1)  # separates people from rejections
    if len(order) <= ANNOTATE_UP_TO_PEOPLE:
        for (i, j), share in np.ndenumerate(shares):
            if share > 0:
                ax.text(j, i, f"{share:.0%}", ha="center", va="center", fontsize=font,
                        color="white" if share > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true person (photos)")
    ax.set_title("Confusion matrix: share of each person's photos, people by name")
    fig.colorbar(image, ax=ax, shrink=min(1.0, 6 / height), label="share of the person's photos")
    return figure_png(fig)


def open_set(known_acceptance: np.ndarray, known_correct: np.ndarray, stranger_acceptance: np.ndarray,
             threshold: float) -> dict:
    """How well the unknown threshold separates enrolled people from strangers.

    known_acceptance: for each face of an enrolled person, the acceptance score of the model's best
    person; known_correct: whether that best person was right. stranger_acceptance: for each face of
    someone not enrolled, its best acceptance score. A face is accepted when its score >= threshold.

    Returns a JSON-ready dict: at the threshold, stranger_rejection (share of strangers rejected) and
    known_accuracy (share of known faces accepted and named right), each with its 95% Wilson
    interval; and a curve of both over a grid of thresholds spanning every score and the threshold.
    """
    known = np.asarray(known_acceptance, dtype=float).ravel()
    correct = np.asarray(known_correct, dtype=bool).ravel()
    strangers = np.asarray(stranger_acceptance, dtype=float).ravel()
    if len(known) != len(correct):
        raise ValueError(f"{len(known)} known scores but {len(correct)} correctness flags")
    if len(known) == 0 or len(strangers) == 0:
        raise ValueError("open-set evaluation needs at least one known face and one stranger")

    def rates(t: float) -> tuple[float, float]:
        return float(np.mean(strangers < t)), float(np.mean((known >= t) & correct))

    everything = np.concatenate([known, strangers, [threshold]])
    grid = np.linspace(everything.min(), everything.max(), OPEN_SET_GRID_POINTS)
    rejection, accuracy = rates(threshold)
    curve = [rates(t) for t in grid]
    return {
        "threshold": float(threshold),
        "known_faces": len(known),
        "strangers": len(strangers),
        "stranger_rejection": rejection,
        "stranger_rejection_interval": wilson_interval(round(rejection * len(strangers)), len(strangers)),
        "known_accuracy": accuracy,
        "known_accuracy_interval": wilson_interval(round(accuracy * len(known)), len(known)),
        "curve": {
            "thresholds": grid.tolist(),
            "stranger_rejection": [r for r, _ in curve],
            "known_accuracy": [a for _, a in curve],
        },
    }


def open_set_png(result: dict) -> bytes:
    """Plot open_set()'s two curves against the threshold, with the calibrated threshold marked."""
    curve = result["curve"]
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(curve["thresholds"], curve["stranger_rejection"], label="strangers rejected", color="tab:red")
    ax.plot(curve["thresholds"], curve["known_accuracy"], label="enrolled people accepted and named right",
            color="tab:blue")
    threshold = result["threshold"]
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1,
               label=f"calibrated threshold {threshold:.3f}: {result['stranger_rejection']:.1%} strangers "
                     f"rejected, {result['known_accuracy']:.1%} enrolled right")
    ax.set_xlabel("acceptance threshold")
    ax.set_ylabel("share of faces")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8)
    ax.set_title(f"Open set: {result['known_faces']} enrolled faces, {result['strangers']} strangers")
    return figure_png(fig)


def training_curves_png(history: dict[str, list[float]]) -> bytes | None:
    """Loss and accuracy per epoch, training and validation, from a Keras history (loss, val_loss,
    accuracy, val_accuracy; any may be missing). None when there is nothing to plot, as for models
    that train no network."""
    panels = [metric for metric in ("loss", "accuracy") if history.get(metric) or history.get(f"val_{metric}")]
    if not panels:
        return None
    fig = Figure(figsize=(5 * len(panels), 3.6), layout="constrained")
    for ax, metric in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        for key, name in ((metric, "training"), (f"val_{metric}", "validation")):
            values = history.get(key) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return figure_png(fig)


def accuracy_by_quality(correct: np.ndarray, qualities: list[Quality]) -> dict:
    """Accuracy of the faces in quality-score terciles (cut at the faces' own 1/3 and 2/3 quantiles), in
    face-size slices (FACE_SIZE_EDGES) and by quality verdict, each with its count and 95% Wilson interval,
    so a reader sees where the model is weak. correct[i] says whether the face of qualities[i] was named right."""
    correct = np.asarray(correct, dtype=bool)
    scores = np.array([q.score for q in qualities])
    sizes = np.array([q.interocular_px for q in qualities])
    verdicts = np.array([q.verdict for q in qualities])

    def accuracy(mask: np.ndarray) -> dict:
        right, faces = int(correct[mask].sum()), int(mask.sum())
        return {"faces": faces, "accuracy": right / faces if faces else None,
                "accuracy_interval": wilson_interval(right, faces)}

    terciles = []
    if len(scores):
        cuts = [scores.min(), *np.quantile(scores, [1 / 3, 2 / 3]), np.inf]
        for i, (low, high) in enumerate(zip(cuts[:-1], cuts[1:])):
            mask = (scores >= low) & (scores < high) if i else scores < high
            terciles.append({"tercile": i + 1, "score_from": float(low),
                             "score_to": float(min(high, scores.max())), **accuracy(mask)})
    edges = [*FACE_SIZE_EDGES, np.inf]
    size_slices = [{"interocular_px_from": low, "interocular_px_to": None if high == np.inf else high,
                    **accuracy((sizes >= low) & (sizes < high))} for low, high in zip(edges[:-1], edges[1:])]
    by_verdict = {verdict: accuracy(verdicts == verdict) for verdict in sorted(set(verdicts))}
    return {"faces": len(qualities), "interval_method": INTERVAL_METHOD, "score_terciles": terciles,
            "face_size": [row for row in size_slices if row["faces"]], "verdicts": by_verdict}
