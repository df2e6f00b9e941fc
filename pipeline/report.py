"""The training report a user reads: dataset exploration, grids of faces, and one self-contained HTML page.

The page embeds every figure as a base64 data URI and carries its own CSS, so it can be mailed, stored
next to the model version or opened offline, and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
import textwrap
from collections import Counter

import numpy as np
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import text_to_path

from pipeline.dataset import Item
from pipeline.evaluate import INTERVAL_METHOD, display_name, figure_png, plot_text
from pipeline.thresholds import thresholds_html

GRID_COLUMNS = 8
CHIP_INCHES = 1.4  # a grid's chip; its column is as wide, or as its widest caption line and a gap
CAPTION_POINTS = 9
# A caption's line wraps after this many characters: names of about that length fit a chip's width.
CAPTION_CHARS = 16
LIST_TITLES = {"no_face": "Photos with no face found", "several_faces": "Photos with several faces",
               "errors": "Photos that could not be read"}
# Lists longer than this are folded into <details> so they do not push the figures off the page.
OPEN_LIST_ITEMS = 10


def explore(items: list[Item], no_face: list[str], several_faces: list[str], errors: dict[str, str],
            sample_chips: list[tuple[str, np.ndarray]]) -> tuple[dict, dict[str, bytes]]:
    """Statistics and figures of a labelled dataset.

    items: every labelled photo; no_face, several_faces: keys of photos where the detector found no
    face or more than one; errors: key -> why a photo could not be read; sample_chips: (person,
    aligned 150x150 uint8 face chip) to show.

    Returns (stats, figures): stats is JSON-ready (people, photos, photos per person min/median/mean/max,
    the lists); figures maps `photos_per_person` (a histogram) and, when chips are given,
    `sample_faces` (a grid of the chips with names) to PNG bytes.
    """
    if not items:
        raise ValueError("no photos to explore")
    counts = np.array(sorted(Counter(item.label for item in items).values()))
    stats = {
        "people": len(counts),
        "photos": len(items),
        "photos_per_person": {"min": int(counts.min()), "median": float(np.median(counts)),
                              "mean": round(float(counts.mean()), 1), "max": int(counts.max())},
        "no_face": list(no_face),
        "several_faces": list(several_faces),
        "errors": dict(errors),
    }
    figures = {"photos_per_person": _photos_per_person_png(counts)}
    if sample_chips:
        figures["sample_faces"] = _chip_grid_png([chip for _, chip in sample_chips],
                                                 [_caption(display_name(person)) for person, _ in sample_chips],
                                                 "Sample aligned faces")
    return stats, figures


def _photos_per_person_png(counts: np.ndarray) -> bytes:
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    # Photo counts are heavy-tailed (LFW: 20 to 530 per person); on a log axis the many people with
    # few photos are not squeezed into the first bar.
    if counts.max() >= 10 * counts.min():
        ax.hist(counts, bins=np.geomspace(counts.min(), counts.max() + 1, 25), color="tab:blue", edgecolor="white")
        ax.set_xscale("log")
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if counts.min() <= t <= counts.max()]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    else:
        ax.hist(counts, bins=min(25, int(counts.max() - counts.min()) + 1), color="tab:blue", edgecolor="white")
    ax.set_xlabel("photos per person")
    ax.set_ylabel("people")
    ax.set_title(f"Photos per person ({len(counts)} people, {int(counts.sum())} photos)")
    return figure_png(fig)


def misclassified_png(examples: list[tuple[np.ndarray, str, str]]) -> bytes:
    """A grid of misclassified faces: (aligned chip, true person, predicted person or unknown)."""
    if not examples:
        raise ValueError("no misclassified faces to show")
    captions = [_caption(display_name(truth), f"said: {display_name(predicted)}") for _, truth, predicted in examples]
    return _chip_grid_png([chip for chip, _, _ in examples], captions, "Misclassified faces (true person, then answer)")


def _caption(*lines: str) -> str:
    """A chip's caption: each line wrapped to CAPTION_CHARS (a longer word is broken)."""
    return "\n".join(textwrap.fill(line, CAPTION_CHARS) for line in lines)


def _chip_grid_png(chips: list[np.ndarray], captions: list[str], title: str) -> bytes:
    columns = min(GRID_COLUMNS, len(chips))
    rows = -(-len(chips) // columns)
    lines = max(caption.count("\n") + 1 for caption in captions)
    # Columns widen to the widest caption line and a gap: a wider line would run into its neighbour's, or be
    # cut off at the figure's edge.
    font = FontProperties(size=CAPTION_POINTS)
    widest = max(text_to_path.get_text_width_height_descent(line, font, ismath=False)[0] / 72
                 for caption in captions for line in caption.split("\n"))
    column = max(CHIP_INCHES, widest + 0.15)
    fig = Figure(figsize=(column * columns, (CHIP_INCHES + 0.19 * lines) * rows + 0.4), layout="constrained")
    fig.suptitle(title)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, chip, caption in zip(axes, chips, captions):
        ax.set_axis_on()
        ax.imshow(chip, cmap="gray" if chip.ndim == 2 else None)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(plot_text(caption), fontsize=CAPTION_POINTS)
    return figure_png(fig)


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    """One self-contained HTML page of a training report.

    report keys: `model` ({name, type, version}), `evaluated_on` (what the figures were measured on,
    in words), `evaluation` (evaluate()'s dict), `dataset` (explore()'s stats, plus any other counts),
    `params`; optional: `split` (how the photos were split, counts and people left out of a part),
    `promotion` (train.decide_promotion()'s dict), `inherited_metrics` ({source_version, note,
    metrics}), `open_set` (open_set()'s dict), `unknown_threshold`, `quality` ({min_quality, left_out_of_fitting,
    by_quality: evaluate.accuracy_by_quality()'s dict}). figures (PNG bytes), each
    optional: photos_per_person, sample_faces, training_curves, confusion_matrix, misclassified, open_set.
    """
    model = report.get("model", {})
    title = (f"{model.get('name', 'model')}: {model.get('type', '?')} model, "
             f"version {model.get('version', '?')}")
    evaluated_on = f"<p>Beside each accuracy: its {INTERVAL_METHOD}.</p>"
    if "evaluated_on" in report:
        where = html.escape(report["evaluated_on"])
        evaluated_on = f"<p><strong>Every figure on this page is measured on {where}.</strong></p>" + evaluated_on
    sections = [
        _section("Headline metrics", evaluated_on + _headline(report["evaluation"], report.get("unknown_threshold"))),
    ]
    if "split" in report:
        sections.append(_section("How the photos were split", _split(report["split"])))
    if "promotion" in report:
        sections.append(_section("Promotion", _promotion(report["promotion"])))
    if "inherited_metrics" in report:
        sections.append(_section("Inherited figures", _inherited(report["inherited_metrics"])))
    sections += [
        _section("Dataset", _dataset(report.get("dataset", {}), figures)),
        _section("Training curves", _figure(figures, "training_curves", "Loss and accuracy per epoch")
                 or "<p>This model type trains no network, so it has no training curves.</p>"),
        _section("Confusion matrix", _figure(figures, "confusion_matrix", "Confusion matrix", wide=True)),
        _section("Per person", _per_person(report["evaluation"]["per_person"])),
        *([_section("By face quality", _quality(report["quality"]))] if "quality" in report else []),
        _section("Misclassified faces", _figure(figures, "misclassified", "Misclassified faces")
                 or "<p>No evaluated face was misclassified.</p>"),
    ]
    if "open_set" in report:
        sections.append(_section("Open set: strangers and enrolled people", _open_set(report["open_set"], figures)))
    if "thresholds" in report:
        sections.append(_section("Thresholds: false accepts and false rejects",
                                 thresholds_html(report["thresholds"], figures.get("roc_det"))))
    sections.append(_section("Parameters", _key_value_table(_flatten(report.get("params", {})))))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #345; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; color: #345; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.low td { background: #fdecea; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; margin-bottom: 1em; }
.card { border: 1px solid #ccd; border-radius: 6px; padding: .6em 1.2em; min-width: 9em; }
.card .value { font-size: 1.7em; font-weight: 600; }
.card .label { color: #556; font-size: .9em; }
.card .interval { color: #556; font-size: .8em; }
img { max-width: 100%; height: auto; }
/* Large confusion matrices are drawn about 20 pixels a person to keep names legible: they get the
   window's full width and scroll sideways rather than shrink. */
.wide { width: 96vw; margin-left: calc(50% - 48vw); overflow-x: auto; text-align: center; }
.wide img { max-width: none; }
ul.keys { font-family: ui-monospace, monospace; font-size: .9em; }
details summary { cursor: pointer; margin: .4em 0; }
"""


def _section(heading: str, body: str) -> str:
    return f"<section>\n<h2>{html.escape(heading)}</h2>\n{body}\n</section>"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _interval(interval: list[float] | None) -> str:
    return "" if interval is None else f"95% interval {interval[0]:.1%} to {interval[1]:.1%}"


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    """A share as a percentage, with its 95% interval in brackets when there is one."""
    return _percent(value) + (f" ({_interval(interval)})" if interval else "")


def _headline(evaluation: dict, threshold: float | None) -> str:
    cards = [("Accuracy", _percent(evaluation["accuracy"]), _interval(evaluation.get("accuracy_interval"))),
             ("Top-5 accuracy", _percent(evaluation.get("top5_accuracy")),
              _interval(evaluation.get("top5_accuracy_interval"))),
             ("Photos evaluated", str(evaluation["images"])),
             ("Answered unknown or no face", str(evaluation["rejected_as_unknown_or_no_face"]))]
    if threshold is not None:
        cards.append(("Unknown threshold", f"{threshold:.3f}"))
    card_html = "".join(f'<div class="card"><div class="value">{html.escape(value)}</div>'
                        f'<div class="label">{html.escape(label)}</div>'
                        + "".join(f'<div class="interval">{html.escape(extra)}</div>' for extra in rest if extra)
                        + "</div>" for label, value, *rest in cards)
    rows = "".join(
        f"<tr><th>{average}</th>"
        + "".join(f'<td class="num">{_percent(evaluation.get(f"{average.lower()}_{m}"))}</td>'
                  for m in ("precision", "recall", "f1"))
        + "</tr>"
        for average in ("Macro", "Weighted"))
    table = ('<table><tr><th>average over people</th><th class="num">precision</th>'
             f'<th class="num">recall</th><th class="num">F1</th></tr>{rows}</table>'
             "<p>Macro: every person counts the same. Weighted: each person counts by their number of photos. "
             "A photo answered unknown or with no face found counts as an error.</p>")
    return f'<div class="cards">{card_html}</div>{table}'


def _split(split: dict) -> str:
    facts = {"how": split["how"], "validation is used for": split["validation_is_used_for"]}
    facts.update({_label(key): split[key] for key in ("training_photos", "validation_photos", "test_photos",
                                                       "stranger_photos", "people_tested")})
    lists = [_item_list("people only in training (one photo: learnt, not measured)",
                        split["people_only_in_training"]),
             _item_list("people not in validation (two photos: one learnt, one tested)",
                        split["people_not_in_validation"])]
    return _key_value_table(facts) + "\n".join(lists)


def _promotion(decision: dict) -> str:
    verdict = "made current" if decision["promote"] else "not made current"
    facts = {"decision": verdict, "why": decision["reason"],
             "photos compared on": f"{decision['photos']} of the {decision['photos_offered']} photos of "
                                   f"{decision['photos_source']} (listed in {decision['photos_key']})",
             "left out: the current version was fitted or tuned on them":
                 decision["photos_left_out"]["fitted_or_tuned_by_current"],
             "left out: this version was fitted or tuned on them":
                 decision["photos_left_out"]["fitted_or_tuned_by_this_version"],
             "this version's accuracy there": _with_interval(decision["candidate_accuracy"],
                                                             decision["candidate_accuracy_interval"])}
    if decision.get("current_version"):
        facts[f"current version {decision['current_version']}'s accuracy there"] = _with_interval(
            decision["current_accuracy"], decision["current_accuracy_interval"])
    return _key_value_table(facts)


def _inherited(inherited: dict) -> str:
    metrics = inherited["metrics"]
    facts = {"source version": inherited["source_version"], "note": inherited["note"],
             "accuracy": _with_interval(metrics.get("accuracy"), metrics.get("accuracy_interval")),
             "photos evaluated": metrics.get("images")}
    return _key_value_table(facts)


def _dataset(dataset: dict, figures: dict[str, bytes]) -> str:
    facts, lists = {}, []
    for key, value in dataset.items():
        if isinstance(value, list | tuple):
            lists.append(_item_list(key, [str(v) for v in value]))
        elif isinstance(value, dict) and key == "errors":
            lists.append(_item_list(key, [f"{k}: {v}" for k, v in value.items()]))
        elif isinstance(value, dict):
            facts[_label(key)] = ", ".join(f"{k} {v}" for k, v in value.items())
        else:
            facts[_label(key)] = value
    parts = [_key_value_table(facts),
             _figure(figures, "photos_per_person", "Histogram of photos per person"),
             _figure(figures, "sample_faces", "Grid of sample aligned faces"),
             *lists]
    return "\n".join(part for part in parts if part)


def _item_list(key: str, values: list[str]) -> str:
    heading = f"{LIST_TITLES.get(key, _label(key))}: {len(values)}"
    if not values:
        return f"<p>{html.escape(heading)}</p>"
    items = "".join(f"<li>{html.escape(v)}</li>" for v in values)
    listing = f'<ul class="keys">{items}</ul>'
    if len(values) > OPEN_LIST_ITEMS:
        return f"<details><summary>{html.escape(heading)} (click to show)</summary>{listing}</details>"
    return f"<p>{html.escape(heading)}</p>{listing}"


def _per_person(per_person: list[dict]) -> str:
    """The per-person table, worst F1 first: the people a user should look at are at the top."""
    rows = []
    for person in sorted(per_person, key=lambda p: (p["f1"], p["person"])):
        low = ' class="low"' if person["f1"] < 0.5 else ""
        rows.append(f"<tr{low}><td>{html.escape(display_name(person['person']))}</td>"
                    f'<td class="num">{person["support"]}</td>'
                    + "".join(f'<td class="num">{_percent(person[m])}</td>' for m in ("precision", "recall", "f1"))
                    + "</tr>")
    return ("<p>Sorted by F1, lowest first; rows below 50% are shaded.</p>"
            '<table class="per-person"><tr><th>person</th><th class="num">photos</th><th class="num">precision</th>'
            '<th class="num">recall</th><th class="num">F1</th></tr>' + "".join(rows) + "</table>")


def _quality(quality: dict) -> str:
    """Accuracy by quality tercile, face size and verdict: where the model is weak."""
    by = quality["by_quality"]
    left_out = (f"{quality['left_out_of_fitting']} training and validation photos were left out of fitting for "
                f"a face below the minimum quality {quality['min_quality']:g}; the test split keeps every face."
                if quality["min_quality"] else "Every face was fitted on (no minimum quality).")

    def rows(slices: list[dict], name) -> str:
        return "".join(f"<tr><td>{html.escape(name(row))}</td><td class=\"num\">{row['faces']}</td>"
                       f"<td class=\"num\">{_percent(row['accuracy'])}</td>"
                       f"<td>{html.escape(_interval(row['accuracy_interval']))}</td></tr>" for row in slices)

    def table(heading: str, body: str) -> str:
        return (f'<table><tr><th>{html.escape(heading)}</th><th class="num">faces</th><th class="num">accuracy'
                f"</th><th>{html.escape(INTERVAL_METHOD)}</th></tr>{body}</table>")

    def size(row: dict) -> str:
        low, high = row["interocular_px_from"], row["interocular_px_to"]
        return f"{low} px and more" if high is None else f"{low}-{high} px"

    verdicts = [{"verdict": verdict, **row} for verdict, row in by["verdicts"].items()]
    return (f"<p>{html.escape(left_out)} Faces of the test split with a face found ({by['faces']}); quality score, "
            "size (distance between the eyes) and verdict as in results (pipeline/quality.py).</p>"
            + table("quality score tercile", rows(by["score_terciles"], lambda row: f"{row['tercile']}: scores "
                                                  f"{row['score_from']:.3f} to {row['score_to']:.3f}"))
            + table("face size between the eyes", rows(by["face_size"], size))
            + table("quality verdict", rows(verdicts, lambda row: row["verdict"])))


def _open_set(result: dict, figures: dict[str, bytes]) -> str:
    rejected = _with_interval(result["stranger_rejection"], result.get("stranger_rejection_interval"))
    accepted = _with_interval(result["known_accuracy"], result.get("known_accuracy_interval"))
    summary = (f"At the calibrated threshold {result['threshold']:.3f}, {rejected} "
               f"of {result['strangers']} strangers are rejected as unknown and "
               f"{accepted} of {result['known_faces']} faces of enrolled people "
               "are accepted and named right. A higher threshold rejects more strangers and more enrolled people.")
    return f"<p>{html.escape(summary)}</p>" + _figure(figures, "open_set", "Open-set curves against the threshold")


def _figure(figures: dict[str, bytes], name: str, alt: str, wide: bool = False) -> str:
    if name not in figures:
        return ""
    data = base64.b64encode(figures[name]).decode("ascii")
    image = f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
    return f'<div class="wide">{image}</div>' if wide else f"<p>{image}</p>"


def _flatten(params: dict, prefix: str = "") -> dict:
    """Nested parameters as dotted keys (head.epochs), so they fit one two-column table."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _label(key: str) -> str:
    return key.replace("_", " ")


def _key_value_table(facts: dict) -> str:
    if not facts:
        return ""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in facts.items())
    return f"<table>{rows}</table>"
