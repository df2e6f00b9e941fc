"""Thresholds at a stated false-accept rate, and the rates a threshold gives, with their intervals.

A false accept is an impostor comparison scored at or above the threshold: a face compared with someone it
is not. The rate here is *per comparison*. A search over a gallery of N people (or N faces) makes N
comparisons, so a stranger is named as somebody about N times as often as the per-comparison rate: 1e-4 per
comparison is about 1 stranger in 10 falsely matched against 1,000 people. A `gallery_far` is the rate per
search instead: per comparison it is gallery_far / N (for a model, the validation faces' best impostor score
is measured directly, which is the same thing for its own gallery).

Thresholds are set on validation comparisons and measured on test comparisons. Comparisons that share a face
or a person are not independent, so the interval of a measured rate is a bootstrap over people (each probe
person's comparisons resampled together) rather than a binomial interval over comparisons, which would be
far too narrow. A rate below about 1 / (impostor comparisons) cannot be set from the data: asking for one is
an error that says what the data can measure.
"""

from __future__ import annotations

import base64
import html

import numpy as np
from matplotlib.figure import Figure

from pipeline.evaluate import figure_png, wilson_interval
from pipeline.models.base import FaceSet, IdentityModel, calibrate_threshold, l2_normalize

BOOTSTRAP_ROUNDS = 1000
CONFIDENCE = 0.95
# The false-accept rates a calibration table keeps thresholds for: 4 a decade, 1e-1 down to 1e-7.
FAR_GRID = tuple(float(10 ** (-e / 4)) for e in range(4, 29))
# A rate is settable only if at least this many impostor comparisons would be accepted at it.
MIN_ACCEPTED = 1
INTERVAL_TEXT = "95% bootstrap interval over probe people"


class RateNotMeasurable(ValueError):
    """The asked rate is below what the validation comparisons can measure."""


def far_threshold(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold at which at most a share `far` of the impostor scores are accepted (score >=
    threshold). RateNotMeasurable when far * comparisons < MIN_ACCEPTED: the data cannot tell such a rate
    from zero."""
    scores = np.sort(np.asarray(impostor, np.float64).ravel())[::-1]
    if not 0 < far < 1:
        raise ValueError(f"a false-accept rate must be between 0 and 1, not {far}")
    allowed = int(np.floor(far * len(scores) + 1e-9))
    if allowed < MIN_ACCEPTED:
        raise RateNotMeasurable(f"a false-accept rate of {far:g} cannot be set from {len(scores):,} impostor "
                                f"comparisons: the lowest measurable is {lowest_far(len(scores)):.2g}")
    # Halfway between the last impostor accepted and the first rejected, so ties stay on their side.
    return float((scores[allowed - 1] + scores[allowed]) / 2) if allowed < len(scores) else float(scores[-1])


def lowest_far(comparisons: int) -> float:
    return MIN_ACCEPTED / max(comparisons, 1)


def rate_with_interval(accepted: np.ndarray, units: np.ndarray | None = None, seed: int = 0) -> dict:
    """The share of True in accepted, and its 95% interval: a bootstrap over units (comparisons with the same
    unit, such as the probe's person, resampled together), or Wilson's when no units are given."""
    accepted = np.asarray(accepted, bool).ravel()
    rate = float(accepted.mean()) if len(accepted) else 0.0
    if units is None or len(accepted) == 0:
        interval = wilson_interval(int(accepted.sum()), len(accepted))
        return {"rate": rate, "interval": interval, "comparisons": int(len(accepted)), "accepted": int(accepted.sum())}
    _, unit_index = np.unique(np.asarray(units).ravel(), return_inverse=True)
    hits = np.bincount(unit_index, weights=accepted, minlength=unit_index.max() + 1)
    totals = np.bincount(unit_index, minlength=unit_index.max() + 1).astype(float)
    return {**_bootstrap(hits, totals, seed), "rate": rate, "comparisons": int(len(accepted)),
            "accepted": int(accepted.sum()), "units": int(len(totals))}


def rate_from_counts(hits: np.ndarray, totals: np.ndarray, seed: int = 0) -> dict:
    """rate_with_interval from per-unit counts already made (accepted comparisons and comparisons per unit)."""
    hits, totals = np.asarray(hits, float), np.asarray(totals, float)
    return {**_bootstrap(hits, totals, seed), "rate": float(hits.sum() / max(totals.sum(), 1)),
            "comparisons": int(totals.sum()), "accepted": int(hits.sum()), "units": int(len(totals))}


def _bootstrap(hits: np.ndarray, totals: np.ndarray, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(totals), np.full(len(totals), 1 / len(totals)), size=BOOTSTRAP_ROUNDS)
    rates = (weights @ hits) / np.maximum(weights @ totals, 1)
    low, high = np.quantile(rates, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return {"interval": [float(low), float(high)], "interval_method": INTERVAL_TEXT}


def calibration(genuine: np.ndarray, impostor: np.ndarray, default: float) -> dict:
    """A compact, JSON-ready record of validation scores: the threshold for each rate of FAR_GRID that the
    comparisons can measure, the default threshold, and the ROC curve (for figures)."""
    impostor = np.asarray(impostor, np.float64).ravel()
    genuine = np.asarray(genuine, np.float64).ravel()
    table = []
    for far in FAR_GRID:
        try:
            threshold = far_threshold(impostor, far)
        except RateNotMeasurable:
            break
        table.append({"far": far, "threshold": threshold, "frr": float(np.mean(genuine < threshold))})
    return {"default": float(default), "genuine": int(len(genuine)), "impostor": int(len(impostor)),
            "lowest_far": lowest_far(len(impostor)), "table": table}


def threshold_for(calibration_record: dict, far: float) -> float:
    """The threshold for a per-comparison rate from a calibration record, interpolated in log-rate between
    the rates it keeps; RateNotMeasurable below the lowest it could measure."""
    table = calibration_record["table"]
    if not table or far < table[-1]["far"] * (1 - 1e-9):
        lowest = table[-1]["far"] if table else calibration_record["lowest_far"]
        raise RateNotMeasurable(f"a false-accept rate of {far:g} per comparison is below what the "
                                f"{calibration_record['impostor']:,} validation comparisons measured "
                                f"(lowest {lowest:.2g})")
    rates = np.log10([row["far"] for row in table])[::-1]
    thresholds = np.array([row["threshold"] for row in table])[::-1]
    return float(np.interp(np.log10(min(far, table[0]["far"])), rates, thresholds))


def roc_points(genuine: np.ndarray, impostor: np.ndarray, points: int = 200) -> dict:
    """False-accept and false-reject rates over thresholds spanning the scores (for the ROC and DET plots)."""
    genuine, impostor = np.sort(np.ravel(genuine)), np.sort(np.ravel(impostor))
    grid = np.unique(np.quantile(np.concatenate([genuine, impostor]), np.linspace(0, 1, points)))
    far = 1 - np.searchsorted(impostor, grid, side="left") / max(len(impostor), 1)
    frr = np.searchsorted(genuine, grid, side="left") / max(len(genuine), 1)
    return {"thresholds": grid.tolist(), "far": far.tolist(), "frr": frr.tolist()}


def roc_det_png(curves: dict[str, tuple[dict, float]], title: str) -> bytes:
    """ROC (genuine accepted against false accepts) and DET (false rejects against false accepts) on log
    scales, one line per named curve (roc_points' dict, and the threshold marked on it with a dot)."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    roc, det = fig.subplots(1, 2)
    floor = 1e-6
    for (name, (curve, threshold)), color in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        far, frr = np.maximum(curve["far"], floor), np.maximum(curve["frr"], floor)
        roc.plot(far, 1 - np.asarray(curve["frr"]), color=color, label=f"{name} (threshold {threshold:.3f})")
        det.plot(far, frr, color=color, label=name)
        at = int(np.argmin(np.abs(np.asarray(curve["thresholds"]) - threshold)))
        roc.plot(far[at], 1 - curve["frr"][at], "o", color=color)
        det.plot(far[at], frr[at], "o", color=color)
    roc.set(xscale="log", xlabel="false-accept rate (per comparison)", ylabel="genuine accepted", title="ROC")
    det.set(xscale="log", yscale="log", xlabel="false-accept rate (per comparison)", ylabel="false-reject rate",
            title="DET")
    for ax in (roc, det):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} (dots: the thresholds in use)")
    return figure_png(fig)


def thresholds_html(section: dict, figure: bytes | None) -> str:
    """The report's section on the threshold: the rule that set it, and the rates measured on the test split."""
    test = section["test"]
    rows = [("rule", section["rule"]), ("threshold", f"{section['threshold']:.4f}")]
    for name, label in (("far", "false-accept rate per comparison"),
                        ("far_per_search", "false-accept rate per search of the whole gallery"),
                        ("frr", "false-reject rate")):
        low, high = test[name]["interval"] or (float("nan"), float("nan"))
        rows.append((f"test split: {label}", f"{test[name]['rate']:.2e} ({low:.2e} to {high:.2e}; "
                                             f"{test[name]['accepted']:,} of {test[name]['comparisons']:,})"))
    pairs = section.get("face_pairs")
    if pairs:
        rows.append(("face indexes: face-to-face threshold", f"{pairs['default']:.4f} balanced; "
                     f"{pairs['genuine']:,} genuine and {pairs['impostor']:,} impostor validation pairs, rates "
                     f"down to {pairs['lowest_far']:.1e} settable"))
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    note = ("<p>Rates are per comparison of a face with one person: against a gallery of N people a stranger is "
            f"falsely named about N times as often. Intervals: {INTERVAL_TEXT}.</p>")
    image = (f'<img alt="ROC and DET curves" src="data:image/png;base64,{base64.b64encode(figure).decode()}">'
             if figure else "")
    return f"<table>{table}</table>{note}{image}"


# -- identity models: the unknown threshold -----------------------------------------------------------

def comparisons(model: IdentityModel, faces: FaceSet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A model's acceptance scores of labelled faces of its own people, as comparisons: (genuine scores,
    per-comparison impostor scores, each face's best impostor score, each impostor comparison's probe person)."""
    acceptance = model.acceptance(faces)
    truth = model.label_indices(faces.labels)
    rows = np.arange(len(truth))
    genuine = acceptance[rows, truth]
    others = np.ones_like(acceptance, dtype=bool)
    others[rows, truth] = False
    probe_person = np.broadcast_to(truth[:, None], acceptance.shape)[others]
    best = np.where(others, acceptance, -np.inf).max(axis=1) if acceptance.shape[1] > 1 else np.full(len(truth), -1.0)
    return genuine, acceptance[others], best, probe_person


def set_far_threshold(model: IdentityModel, validation: FaceSet, far: float | None, gallery_far: float | None) -> str:
    """Set the model's unknown threshold for a false-accept rate measured on its validation faces: per
    comparison (far), or per search of the model's whole gallery (gallery_far: a face's best impostor score);
    returns the rule in words. RateNotMeasurable when the validation faces cannot measure the rate."""
    _, impostor, best, _ = comparisons(model, validation)
    if far is not None:
        model.threshold_ = far_threshold(impostor, far)
        return f"false-accept rate {far:g} per comparison, set on the validation split"
    model.threshold_ = far_threshold(best, gallery_far)
    return (f"false-accept rate {gallery_far:g} per search of the {len(model.labels_)} people (a face's best "
            "impostor score), set on the validation split")


def model_thresholds(model: IdentityModel, validation: FaceSet, test: FaceSet, rule: str,
                     pairs: dict | None = None) -> tuple[dict, bytes]:
    """The report's threshold section: the rule and threshold, the false-accept (per comparison and per
    search) and false-reject rates measured on the test split with their intervals, and the ROC/DET figure
    of the validation and test comparisons (and of the validation face pairs, when given)."""
    threshold = float(model.threshold_)
    val_genuine, val_impostor, _, _ = comparisons(model, validation)
    genuine, impostor, best, probe = comparisons(model, test)
    test_people = model.label_indices(test.labels)
    section = {
        "rule": rule, "threshold": threshold,
        "validation": {"genuine": int(len(val_genuine)), "impostor": int(len(val_impostor)),
                       "lowest_measurable_far": lowest_far(len(val_impostor))},
        "test": {"far": rate_with_interval(impostor >= threshold, probe),
                 "far_per_search": rate_with_interval(best >= threshold, test_people),
                 "frr": rate_with_interval(genuine < threshold, test_people)},
        "roc": {"validation": roc_points(val_genuine, val_impostor), "test": roc_points(genuine, impostor)},
    }
    curves = {"validation: face to person": (section["roc"]["validation"], threshold),
              "test: face to person": (section["roc"]["test"], threshold)}
    if pairs and pairs.get("roc"):
        section["face_pairs"] = {k: pairs[k] for k in ("default", "genuine", "impostor", "lowest_far")}
        curves["validation: face to face (face indexes)"] = (pairs["roc"], pairs["default"])
    return section, roc_det_png(curves, "False accepts and false rejects")


# -- face indexes: face-to-face comparisons --------------------------------------------------------------

PAIR_FACES_MAX = 6000  # validation faces compared pairwise at most (18 million pairs)


def face_pairs(faces: FaceSet, seed: int = 0) -> dict:
    """The calibration a face index matches faces at: cosine similarities of every pair of validation faces,
    same person (genuine) or not (impostor), as calibration() keeps them; default: the balanced threshold."""
    keep = np.arange(len(faces))
    if len(keep) > PAIR_FACES_MAX:
        keep = np.sort(np.random.default_rng(seed).choice(keep, PAIR_FACES_MAX, replace=False))
    vectors = l2_normalize(faces.embeddings[keep])
    labels = np.asarray(faces.labels)[keep]
    upper = np.triu_indices(len(keep), k=1)
    similarity = (vectors @ vectors.T)[upper]
    same = (labels[:, None] == labels[None, :])[upper]
    genuine, impostor = similarity[same], similarity[~same]
    record = calibration(genuine, impostor, calibrate_threshold(genuine, impostor) if len(genuine) else 1.0)
    return {**record, "roc": roc_points(genuine, impostor) if len(genuine) else None}
