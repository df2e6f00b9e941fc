"""The four model types' inference under Keras's JAX backend, with TensorFlow unimportable, on real LFW faces.

GPU nodes have JAX but no TensorFlow (issue 11). This module proves that a model of every type
(`centroid`, `embedding`, `cnn`, `finetune`) trained and published under TensorFlow is loaded there
by the project's own loader and names the same faces the same way.

This process (TensorFlow backend) finds and embeds the faces of eight LFW people with FacePipeline,
splits each person's photos into train, validation and test, trains each model type with small
parameters and publishes it with model_files into a LocalStorage, as a training job does. A fresh
interpreter with KERAS_BACKEND=jax, JAX_PLATFORMS=cpu and TensorFlow made unimportable then loads
each model with load_model_files and predicts the test faces (their chips and embeddings handed over
as .npy files); at its end no TensorFlow module may have been loaded. Its answers must be this
process's answers from the same published files: the same label (a person or `unknown`) and the same
best guess for every face, and scores and confidences within SCORE_TOLERANCE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.faces import FacePipeline
from pipeline.models import FaceSet, IdentityModel, create_model, load_model_files, model_files
from pipeline.storage import LocalStorage
from tests.test_models import subject_faces

pytestmark = pytest.mark.system  # a JAX interpreter

REPO = Path(__file__).resolve().parents[1]

# Eight people with at least 13 LFW photos each: the first 6 of a person's photos (by name) train,
# the next 3 validate, the next 4 are the test faces.
PEOPLE = ["Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Jean_Chretien", "Junichiro_Koizumi", "Laura_Bush", "Serena_Williams"]
TRAIN_PHOTOS = 6
VAL_PHOTOS = 3
TEST_PHOTOS = 4  # 32 test faces: one prediction batch of 32 for the cnn and finetune models

# Small parameters: this checks inference on two backends, not how well the models learn. cnn and
# finetune run on the chips and are slow on CPU, so they get few epochs.
MODEL_PARAMS: dict[str, dict] = {
    "centroid": {},
    "embedding": {"epochs": 40, "patience": 5},
    "cnn": {"epochs": 20, "patience": 20},
    "finetune": {"epochs": 2, "patience": 2},
}
MODEL_TYPES = list(MODEL_PARAMS)

# The same float32 arithmetic in another order on another backend (convolution algorithms, fused
# multiply-adds); tests/test_keras_backends.py holds the networks' outputs to the same bound.
SCORE_TOLERANCE = 1e-4
MIN_TEST_FACES = 20
# Every model must name several people among the test faces, so that equal labels are not trivial.
MIN_PEOPLE_NAMED = 3


@dataclass
class Faces:
    train: FaceSet
    val: FaceSet
    test: FaceSet


@dataclass
class Answers:
    """One model's predictions of the test faces, as lists."""

    model: str  # the class the loader made
    labels: list[str]
    best_guesses: list[str]
    scores: list[float]
    confidences: list[float]


def model_prefix(model_type: str) -> str:
    return f"models/{model_type}"


def answers(model: IdentityModel, faces: FaceSet) -> Answers:
    predictions = model.predict(faces)
    return Answers(type(model).__name__, [p.label for p in predictions], [p.best_guess for p in predictions],
                   [p.score for p in predictions], [p.confidence for p in predictions])


# Runs under KERAS_BACKEND=jax with TensorFlow unimportable (as on the GPU machines): every published
# model loaded by load_model_files, predicting the test faces.
#
# TensorFlow is hidden by an import hook, as if it were not installed, rather than by
# sys.modules["tensorflow"] = None (tests/test_keras_backends.py): Keras's preprocessing layers (the
# cnn and finetune models' augmentation) ask whether they run inside a TensorFlow graph when
# "tensorflow" is in sys.modules, and a None entry is in it, so they would try to use TensorFlow where
# a machine without it never does.
JAX_SCRIPT = """
import importlib.abc, json, sys
from dataclasses import asdict
from pathlib import Path
import numpy as np

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTensorFlow())  # import tensorflow now raises ImportError
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from pipeline.models import FaceSet, load_model_files
from pipeline.storage import LocalStorage
from tests.test_models_jax import MODEL_TYPES, answers, model_prefix

work = Path(sys.argv[1])
faces = FaceSet(np.load(work / "chips.npy"), np.load(work / "embeddings.npy"))
storage = LocalStorage(work / "storage")
found = {model_type: asdict(answers(load_model_files(storage, model_prefix(model_type)), faces))
         for model_type in MODEL_TYPES}
found["keras_backend"] = keras.backend.backend()
(work / "jax_answers.json").write_text(json.dumps(found))
assert not [name for name in sys.modules if name.split(".")[0] == "tensorflow"]
"""


@pytest.fixture(scope="module")
def faces(lfw_dir: Path, face_pipeline: FacePipeline) -> Faces:
    """Each person's photos split in order into train, validation and test, their subject faces found."""
    splits: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for person in PEOPLE:
        photos = sorted((lfw_dir / person).glob("*.jpg"))
        splits["train"] += photos[:TRAIN_PHOTOS]
        splits["val"] += photos[TRAIN_PHOTOS:TRAIN_PHOTOS + VAL_PHOTOS]
        splits["test"] += photos[TRAIN_PHOTOS + VAL_PHOTOS:TRAIN_PHOTOS + VAL_PHOTOS + TEST_PHOTOS]
    return Faces(**{split: subject_faces(face_pipeline, paths) for split, paths in splits.items()})


@pytest.fixture(scope="module")
def work(faces: Faces, face_resnet_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding every model type trained under TensorFlow and published into storage/ by
    model_files, and the test faces' chips and embeddings."""
    work = tmp_path_factory.mktemp("models-jax")
    storage = LocalStorage(work / "storage")
    for model_type, params in MODEL_PARAMS.items():
        if model_type == "finetune":
            params = {**params, "cache_dir": face_resnet_cache}
        model = create_model(model_type, **params).fit(faces.train, faces.val)
        for name, data in model_files(model).items():
            storage.put(f"{model_prefix(model_type)}/{name}", data)
    np.save(work / "chips.npy", faces.test.chips)
    np.save(work / "embeddings.npy", faces.test.embeddings)
    return work


@pytest.fixture(scope="module")
def tensorflow_answers(work: Path) -> dict[str, Answers]:
    """The published models loaded and run in this process, under TensorFlow."""
    storage = LocalStorage(work / "storage")
    test = FaceSet(np.load(work / "chips.npy"), np.load(work / "embeddings.npy"))
    return {model_type: answers(load_model_files(storage, model_prefix(model_type)), test)
            for model_type in MODEL_TYPES}


@pytest.fixture(scope="module")
def jax_answers(work: Path) -> dict:
    """The published models loaded and run in a fresh interpreter under JAX, TensorFlow unimportable."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(work)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((work / "jax_answers.json").read_text())


def test_the_test_faces_are_many_people_named_by_every_model(
        faces: Faces, tensorflow_answers: dict[str, Answers]) -> None:
    assert len(faces.test) >= MIN_TEST_FACES
    assert sorted(set(faces.test.labels)) == sorted(PEOPLE)
    for model_type, expected in tensorflow_answers.items():
        assert len(set(expected.best_guesses)) >= MIN_PEOPLE_NAMED, (model_type, expected.best_guesses)


def test_the_jax_run_used_jax(jax_answers: dict) -> None:
    # The script also asserted that no TensorFlow module was loaded, or jax_answers would have failed.
    assert jax_answers["keras_backend"] == "jax"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_jax_answers_as_tensorflow_does(
        model_type: str, faces: Faces, jax_answers: dict, tensorflow_answers: dict[str, Answers]) -> None:
    expected, found = tensorflow_answers[model_type], Answers(**jax_answers[model_type])
    assert found.model == expected.model
    assert found.labels == expected.labels
    assert found.best_guesses == expected.best_guesses
    np.testing.assert_allclose(found.scores, expected.scores, rtol=0, atol=SCORE_TOLERANCE)
    np.testing.assert_allclose(found.confidences, expected.confidences, rtol=0, atol=SCORE_TOLERANCE)
    named_right = sum(label == truth for label, truth in zip(found.labels, faces.test.labels))
    print(f"\n{model_type}: {named_right} of {len(faces.test)} test faces named right on both backends; "
          f"largest difference: score {np.abs(np.subtract(found.scores, expected.scores)).max():.1e}, "
          f"confidence {np.abs(np.subtract(found.confidences, expected.confidences)).max():.1e}")
