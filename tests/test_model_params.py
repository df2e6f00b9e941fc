"""The parameters a training request may set per model type: named, typed strictly, bounded, and
never a path. The validator runs in the API process, so it must not load TensorFlow."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models import MODEL_TYPES
from pipeline.models.params import MODEL_PARAM_SCHEMAS, RESNET_BLOCKS, validate_model_params

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model_type, params, named", [
    ("embedding", {"epochs": -5}, "epochs=-5: Input should be greater than or equal to 1"),
    ("embedding", {"epochs": 501}, "epochs=501: Input should be less than or equal to 500"),
    ("embedding", {"epochs": 1e9}, "epochs=1000000000.0: Input should be a valid integer"),
    ("embedding", {"epochs": "5"}, "epochs='5': Input should be a valid integer"),
    ("embedding", {"epochs": True}, "epochs=True: Input should be a valid integer"),
    ("embedding", {"learning_rate": 0}, "learning_rate=0: Input should be greater than 0"),
    ("embedding", {"learning_rate": 1.5}, "learning_rate=1.5: Input should be less than or equal to 1"),
    ("embedding", {"dropout": 1.0}, "dropout=1.0: Input should be less than 1"),
    ("embedding", {"batch_size": 0}, "batch_size=0: Input should be greater than or equal to 1"),
    ("embedding", {"bogus": 1}, "unknown parameter 'bogus'"),
    ("centroid", {"epochs": 3}, "unknown parameter 'epochs'"),
    ("cnn", {"filters": [32] * 7}, "filters=[32, 32, 32, 32, 32, 32, 32]: List should have at most 6 items"),
    ("cnn", {"filters": [0]}, "filters.0=0: Input should be greater than or equal to 1"),
    ("cnn", {"image_size": 16, "filters": [8] * 5}, "image_size 16 is too small for 5 blocks"),
    ("finetune", {"trainable_blocks": 15}, "trainable_blocks=15: Input should be less than or equal to 14"),
])
def test_a_parameter_out_of_bounds_is_refused_naming_it_and_the_bound(model_type, params, named):
    with pytest.raises(ValueError) as refused:
        validate_model_params(model_type, params)
    assert named in str(refused.value)
    assert f"model type {model_type}" in str(refused.value)


def test_no_model_type_lets_a_request_choose_a_path():
    with pytest.raises(ValueError, match="unknown parameter 'cache_dir'"):
        validate_model_params("finetune", {"cache_dir": "/any/path"})
    for schema in MODEL_PARAM_SCHEMAS.values():
        assert not {"cache_dir", "path", "directory"} & set(schema.model_fields)


def test_valid_parameters_come_back_as_given_and_only_those():
    assert validate_model_params("embedding", {"epochs": 3, "learning_rate": 1}) == {"epochs": 3, "learning_rate": 1.0}
    assert validate_model_params("cnn", {"filters": [16, 32]}) == {"filters": [16, 32]}
    assert validate_model_params("centroid", {}) == {}


def test_an_unknown_model_type_or_parameters_that_are_not_an_object_are_refused():
    with pytest.raises(ValueError, match="unknown model type 'svm': choose one of centroid, cnn, embedding, finetune"):
        validate_model_params("svm", {})
    with pytest.raises(ValueError, match="model_params must be an object, got list"):
        validate_model_params("embedding", [1])


def test_a_hostile_value_is_cut_short_in_the_message():
    with pytest.raises(ValueError) as refused:
        validate_model_params("embedding", {"seed": "x" * 5000})
    assert len(str(refused.value)) < 200


def test_every_model_type_has_a_schema_with_its_constructors_parameters_and_defaults():
    assert set(MODEL_PARAM_SCHEMAS) == set(MODEL_TYPES)
    for model_type, model in MODEL_TYPES.items():
        signature = inspect.signature(model.__init__).parameters
        constructor = {name: p.default for name, p in signature.items()
                       if name != "self" and name not in model.local_arguments}
        schema = MODEL_PARAM_SCHEMAS[model_type]
        declared = {name: field.default for name, field in schema.model_fields.items()}
        assert set(declared) == set(constructor), model_type
        for name, default in constructor.items():
            assert declared[name] == (list(default) if isinstance(default, tuple) else default), (model_type, name)


def test_the_resnet_block_bound_is_the_networks_number_of_blocks():
    from pipeline.face_resnet import RESIDUAL_BLOCKS

    assert len(RESIDUAL_BLOCKS) == RESNET_BLOCKS


@pytest.mark.system
def test_validating_parameters_loads_neither_tensorflow_nor_keras():
    code = ("import sys\nfrom pipeline.models.params import validate_model_params\n"
            "validate_model_params('cnn', {'epochs': 3})\n"
            "print(' '.join(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert "pydantic" in loaded
    assert not {"tensorflow", "keras", "mtcnn"} & loaded
