"""Searching a face index: the face searched with (a photo's, a job's, or a person of a model), the
threshold a face found is called a match at, and the answer.

Similarities are cosine similarities of unit embeddings. A face searched with a face is matched at the
index's calibration (face-to-face comparisons of the validation photos of the model version that created
the index; pipeline.thresholds), by default at its balanced threshold, or at the threshold for a stated
false-accept rate. A person is their mean face (a centroid or embedding model's centroid): a face's
similarity to it is exactly the model's acceptance score, so a person is matched at the model's own
threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.face_index import FaceIndex, filter_sql, unit
from pipeline.faces import PhotoFaces
from pipeline.recognize import LoadedModel
from pipeline.thresholds import threshold_for


@dataclass
class Query:
    """The face a search is made with, and what to tell the asker about it."""

    vector: np.ndarray
    described: dict  # what was searched with, for the answer
    threshold: float | None = None  # set by the query itself (a person: the model's threshold)
    threshold_rule: str | None = None
    extra: dict = field(default_factory=dict)


def photo_query(photo: PhotoFaces, face: int | None) -> Query:
    """A photo's face: `face` (its number in the photo's faces) or the photo's main face. ValueError if the
    photo has no face, or not that one."""
    if photo.error:
        raise ValueError(f"the photo could not be read: {photo.error}")
    if not photo.faces:
        raise ValueError("no face was found in the photo")
    number = photo.main_face if face is None else face
    if number >= len(photo.faces):
        raise ValueError(f"the photo has {len(photo.faces)} face(s): face {face} does not exist")
    return Query(photo.embeddings[number], {
        "kind": "photo", "face": number, "box": [round(float(v), 1) for v in photo.faces[number].box],
        "faces_in_photo": [{"box": [round(float(v), 1) for v in f.box], "score": round(float(f.score), 4)}
                           for f in photo.faces],
        "width": photo.size[0], "height": photo.size[1]})


def face_query(index: FaceIndex, job: str, key: str, face: int) -> Query:
    """A face a job added to the index (LookupError naming it if the index does not hold it)."""
    return Query(index.vector_of(job, key, face), {"kind": "face", "job": job, "key": key, "face": face})


def person_query(loaded: LoadedModel, person: str) -> Query:
    """A person of a centroid or embedding model: their mean face, matched at the model's threshold.
    LookupError for a person the model does not know, ValueError for a model without mean faces."""
    model = loaded.model
    centroids = getattr(model, "centroids_", None)
    if centroids is None:
        raise ValueError(f"model {loaded.name} is a {model.model_type} model: it keeps no mean face of its people "
                         "to search with (centroid and embedding models do); search with a photo or a face")
    if person not in model.labels_:
        raise LookupError(f"model {loaded.name} version {loaded.version} has no person {person!r}")
    return Query(centroids[model.labels_.index(person)],
                 {"kind": "person", "model": loaded.name, "model_version": loaded.version, "person": person},
                 threshold=float(model.threshold_),
                 threshold_rule=f"model {loaded.name} version {loaded.version}'s own threshold")


def match_threshold(index: FaceIndex, query: Query, far: float | None, gallery_far: float | None,
                    threshold: float | None, faces_searched: int) -> tuple[float | None, str]:
    """The similarity at or above which a face found is a match, and the rule that set it, in words.
    None when there is no rule (an index without a calibration, and none asked)."""
    if threshold is not None:
        return threshold, "the threshold asked for"
    if query.threshold is not None:
        return query.threshold, query.threshold_rule
    calibration = index.info().get("calibration")
    if calibration is None:
        if far or gallery_far:
            raise ValueError(f"face index {index.name!r} has no calibration to set a false-accept rate from (its first "
                             "job's model version measured none): give a threshold")
        return None, "none: the index has no calibration (its first job's model version measured none)"
    source = calibration.get("source", "the validation photos of the model version that created the index")
    if far:
        return threshold_for(calibration, far), f"false-accept rate {far:g} per comparison, set on {source}"
    if gallery_far:
        # A search compares the face with every face searched: per comparison, the rate is gallery_far / N.
        per_comparison = gallery_far / max(faces_searched, 1)
        return (threshold_for(calibration, per_comparison),
                f"false-accept rate {gallery_far:g} per search of {faces_searched:,} faces ({per_comparison:.2g} per "
                f"comparison), set on {source}")
    return calibration["default"], f"the balanced threshold of {source}"


def search(index: FaceIndex, query: Query, k: int, in_jobs: list[str] = (), key_prefix: str | None = None,
           far: float | None = None, gallery_far: float | None = None, threshold: float | None = None,
           exact: bool = False) -> dict:
    """The answer to a search: what was searched with, the threshold and its rule, and the k faces found,
    most similar first, each with whether it is a match."""
    faces_searched = index.count(filter_sql(in_jobs, key_prefix)) if gallery_far else None
    limit, rule = match_threshold(index, query, far, gallery_far, threshold, faces_searched or 0)
    hits, searched_with = index.find(unit(query.vector)[0], k, in_jobs, key_prefix, exact=exact)
    faces = [{**hit.to_json(), "match": None if limit is None else hit.similarity >= limit} for hit in hits]
    return {"index": index.name, "query": query.described, "k": k, "threshold": limit, "threshold_rule": rule,
            "filters": {"in_jobs": list(in_jobs), "key_prefix": key_prefix}, "exact": exact,
            "searched_with": searched_with, "faces": faces,
            "matches": sum(bool(face["match"]) for face in faces)}
