"""One name per person per photo: a photo's faces are named jointly, each person at most once.

Named one by one, two faces of a group photo can both get the same person (two photos of one person pasted
together, a look-alike beside the real one). Jointly, the faces a model would name today are matched to
people so that the total of the model's scores over the named faces is as large as possible
(scipy.optimize.linear_sum_assignment), using only pairs whose acceptance score reaches the model's
threshold. A face that lost its best person to another face gets its next best person above the threshold,
or `unknown`, and its answer says which face took its best person.

A face the model would answer `unknown` today stays unknown, and a photo with one face, or whose faces all
have different best people, is named exactly as one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.models import UNKNOWN, IdentityModel, Prediction

NEXT_BEST = "next_best"  # named, but not as its best person: another face of the photo took that one


@dataclass
class Named:
    """A face's answer, and when the joint naming changed it, how and why.

    For a changed face, prediction's best_guess, score and confidence are those of the best person left to
    it (one no other face of the photo was given): the person it is named, or for an `unknown` face the
    closest one left, below the threshold. So a client that re-labels faces at another threshold from
    best_guess and score still never shows a person twice at the model's threshold."""

    prediction: Prediction
    assigned: str | None = None  # None: as one by one; NEXT_BEST; UNKNOWN: nobody above the threshold was left
    best_match: str | None = None  # the person this face matched best, given to another face
    best_match_given_to: int | None = None  # that face's index in the photo

    def to_json(self) -> dict:
        """The fields a result line gets for this face beyond its identity and scores."""
        if self.assigned is None:
            return {}
        fields = {"assigned": self.assigned, "best_match": self.best_match,
                  "best_match_given_to": self.best_match_given_to}
        if self.assigned == UNKNOWN:
            fields["unknown_because"] = (f"its best match, {self.best_match}, was given to face "
                                         f"{self.best_match_given_to} (one name per person per photo), and no "
                                         "other person left is above the threshold")
        return fields


def name_jointly(model: IdentityModel, scores: np.ndarray, acceptance: np.ndarray) -> list[Named]:
    """The answers for one photo's faces, from the model's class scores and acceptance scores (faces x people)."""
    predictions = model.predictions(scores, acceptance)
    named = [i for i, p in enumerate(predictions) if p.label != UNKNOWN]
    people = assign(scores[named], acceptance[named] >= model.threshold_)
    holder = {person: face for face, person in zip(named, people) if person is not None}
    answers = [Named(p) for p in predictions]
    for face, person in zip(named, people):
        best = int(scores[face].argmax())
        if person == best:
            continue
        if person is not None:
            name = model.labels_[person]
            prediction = Prediction(name, float(acceptance[face, person]), float(scores[face, person]), name)
        else:
            prediction = _closest_left(model, scores[face], acceptance[face], set(holder))
        answers[face] = Named(prediction, NEXT_BEST if person is not None else UNKNOWN,
                              model.labels_[best], holder[best])
    return answers


def assign(weights: np.ndarray, allowed: np.ndarray) -> list[int | None]:
    """For each row (face), the column (person) it gets, or None: each column at most once, only allowed
    pairs, the largest total weight (weights are scores, larger is better). A face may stay unassigned: extra
    columns, one per face, of weight 0. Then a face whose best allowed column no other face holds gets it,
    so that a face loses its best person only to another face."""
    faces, people = weights.shape
    if faces == 0:
        return []
    # linear_sum_assignment minimises: costs are the negated weights, inf where not allowed.
    cost = np.full((faces, people + faces), np.inf)
    cost[:, :people] = np.where(allowed, -weights, np.inf)
    cost[np.arange(faces), people + np.arange(faces)] = 0.0
    rows, columns = linear_sum_assignment(cost)
    chosen: list[int | None] = [None] * faces
    for row, column in zip(rows, columns):
        chosen[row] = int(column) if column < people else None
    # Only on a tie (or a weight of 0 or less, which no model's accepted score is) can the solver leave a
    # face without its best person while nobody holds that person.
    for row in range(faces):
        best = int(np.argmax(np.where(allowed[row], weights[row], -np.inf)))
        if allowed[row, best] and chosen[row] != best and best not in chosen:
            chosen[row] = best
    return chosen


def _closest_left(model: IdentityModel, scores: np.ndarray, acceptance: np.ndarray, taken: set[int]) -> Prediction:
    """An unknown answer for a face whose best person was taken: the closest person left to it, if any."""
    left = [person for person in range(len(model.labels_)) if person not in taken]
    if not left:
        return Prediction(UNKNOWN, 0.0, 0.0, UNKNOWN)
    person = max(left, key=lambda p: acceptance[p])
    return Prediction(UNKNOWN, float(acceptance[person]), float(scores[person]), model.labels_[person])
