"""People's labels in the training report: any label a training manifest may carry (any JSON string; uploads
allow letters, digits, `. _ - ( ) +` and spaces) survives the figures, the HTML page and report.json, and
every caption fits the figure rather than being cut off at its edge or drawn over its neighbour's.

Fast: the report's functions are called directly, as a training job calls them, with no worker.
"""

from __future__ import annotations

import html
import io
import json

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from pipeline.dataset import Item
from pipeline.evaluate import confusion_matrix_png, display_name, evaluate, figure_png, plot_text
from pipeline.report import explore, misclassified_png, render_html

# Each is special somewhere: to matplotlib (mathematics between `$`, and an error when that is malformed),
# HTML, JSON, CSV, shells, format strings or TeX.
LABELS = ["$x$", "$$", r"$\frac{$", "cost $", "a_b^c", "<script>alert(1)</script>", "O'Brien", '"quoted"', "a,b",
          "back\\slash", "100%", "{braces}", "tab\there", "new\nline", "a & b", "#1 ~ fan", "Zoë Ünal",
          "Saddam_Hussein", "x"]
CHIP = np.full((150, 150, 3), 0, dtype=np.uint8)  # black, so the chips can be told from the captions


def decodes(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("L"))


def test_every_label_survives_the_figures_the_page_and_the_json() -> None:
    items = [Item(f"people/{i}/{j}.jpg", label) for i, label in enumerate(LABELS) for j in range(3)]
    stats, figures = explore(items, [], [], {}, [(label, CHIP) for label in LABELS])
    truth = [label for label in LABELS for _ in range(2)]
    predicted = [label if i % 2 else LABELS[(LABELS.index(label) + 1) % len(LABELS)] for i, label in enumerate(truth)]
    metrics = evaluate(truth, predicted, LABELS)
    figures["confusion_matrix"] = confusion_matrix_png(metrics["confusion_matrix"])
    # Each caption pairs two labels: a lone `$` in each would make mathematics of what lies between.
    figures["misclassified"] = misclassified_png([(CHIP, t, p) for t, p in zip(truth, predicted) if t != p])
    report = {"model": {"name": "labels", "type": "embedding", "version": "v1"}, "evaluation": metrics,
              "dataset": stats, "params": {}}

    page = render_html(report, figures)
    saved = json.loads(json.dumps(report))

    assert set(figures) == {"photos_per_person", "sample_faces", "confusion_matrix", "misclassified"}
    for png in figures.values():
        decodes(png)
    for label in LABELS:
        assert f"<td>{html.escape(display_name(label))}</td>" in page, label
    assert "<script" not in page
    assert [p["person"] for p in saved["evaluation"]["per_person"]] == LABELS


@pytest.mark.parametrize("label", LABELS)
def test_a_label_is_drawn_as_written_never_as_mathematics(label: str) -> None:
    def drawn(text: str, **options) -> bytes:
        fig = Figure(figsize=(3, 1))
        fig.text(0.05, 0.5, text, **options)
        return figure_png(fig)

    assert drawn(plot_text(label)) == drawn(label, parse_math=False)


def one_row_grid(png: bytes) -> tuple[list[tuple[int, int]], np.ndarray]:
    """A grid of one row of black chips: the chips' spans (first and last pixel column), and for each
    pixel column whether the captions below the chips put ink in it."""
    image = decodes(png)
    black = image < 40
    per_row = black.sum(axis=1)
    rows = np.flatnonzero(per_row > per_row.max() / 2)  # the chips; a line of text is never that dark
    top, bottom = rows[0], rows[-1]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], black[top + 10].astype(int), [0]])))
    spans = [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]
    return spans, (image[bottom + 2:] < 128).any(axis=0)


def test_captions_fit_their_column_and_the_figure() -> None:
    answers = ["Saddam_Hussein", "Gloria_Macapagal_Arroyo", "Wolfeschlegelsteinhausenbergerdorff", "Saddam_Hussein"]
    examples = [(CHIP, "Tony_Blair", answers[i % len(answers)]) for i in range(8)]

    spans, ink = one_row_grid(misclassified_png(examples))

    assert len(spans) == 8
    centres = [(a + b) / 2 for a, b in spans]
    pitch = centres[1] - centres[0]
    borders = [centres[0] - pitch / 2] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [centres[-1] + pitch / 2]
    for border in borders:  # no caption crosses into its neighbour's column, or off the figure
        assert not ink[max(0, int(border) - 1): int(border) + 2].any(), f"a caption crosses x={border:.0f}"
    assert not ink[:2].any() and not ink[-2:].any()  # nothing cut at the figure's edges
