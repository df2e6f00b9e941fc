"""Recognition refuses a model whose embeddings are of another kind than the pipeline makes."""

from __future__ import annotations

import pytest

from pipeline.models import create_model
from pipeline.recognize import LoadedModel, recognize


def test_a_model_trained_on_other_embeddings_is_refused_rather_than_answering_wrongly(face_pipeline, lfw_dir):
    photo = (lfw_dir / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    other = face_pipeline.embedder_name + "_crops-other"
    loaded = LoadedModel("m", "v", create_model("centroid"), embedder=other)
    with pytest.raises(ValueError, match="trained on .*_crops-other embeddings"):
        list(recognize(face_pipeline, loaded, [("tony.jpg", photo)]))
