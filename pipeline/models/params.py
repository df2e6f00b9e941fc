"""The parameters a request may set for each model type, with bounds.

A training request's `model_params` reach a model's constructor; unchecked, `{"epochs": -5}` trained a
model at chance level, `{"epochs": 1e9}` held a GPU for good and `{"cache_dir": ...}` chose where a
worker writes. Each model type declares here what a request may set: unknown names are refused,
numbers are strict (1e9 or "5" is not an int) and bounded, and nothing names a path (the finetune
model's weights cache comes from the settings only).

This module imports neither TensorFlow nor Keras: the API validates with it.
tests/test_model_params.py checks that the defaults here are the constructors' defaults.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Bounds shared by the Keras models.
Epochs = Annotated[int, Field(ge=1, le=500, description="training passes (early stopping may end sooner)")]
Patience = Annotated[int, Field(ge=0, le=500, description="epochs without a better validation loss before stopping")]
BatchSize = Annotated[int, Field(ge=1, le=4096, description="faces per training step")]
LearningRate = Annotated[float, Field(gt=0, le=1, description="Adam's learning rate")]
Dropout = Annotated[float, Field(ge=0, lt=1, description="share of units dropped while training")]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed, for repeatable training")]
Units = Annotated[int, Field(ge=1, le=4096)]

# dlib's ResNet has 14 residual blocks (pipeline.face_resnet.RESIDUAL_BLOCKS, which loads TensorFlow,
# so the number is repeated here; a test keeps the two equal).
RESNET_BLOCKS = 14


class _Params(BaseModel):
    # strict: a JSON number 1e9 or a string "5" is not an int; an int is still accepted for a float.
    model_config = ConfigDict(extra="forbid", strict=True)


class EmbeddingParams(_Params):
    """`embedding`: a Keras head on the ResNet embeddings."""

    hidden_units: Units = 256
    dropout: Dropout = 0.3
    learning_rate: LearningRate = 1e-3
    epochs: Epochs = 200
    batch_size: BatchSize = 64
    patience: Patience = 15
    seed: Seed = 0


class CentroidParams(_Params):
    """`centroid`: nearest class mean; nothing to set."""


class CnnParams(_Params):
    """`cnn`: the original notebook's CNN trained from scratch on the face chips."""

    image_size: Annotated[int, Field(ge=16, le=150, description="side of the network's input, in pixels")] = 96
    filters: Annotated[list[Annotated[int, Field(ge=1, le=512)]],
                       Field(min_length=1, max_length=6, description="filters of each convolution block")] = [
        32, 64, 128]
    dense_units: Units = 128
    dropout: Dropout = 0.5
    learning_rate: LearningRate = 1e-3
    epochs: Epochs = 100
    batch_size: BatchSize = 32
    patience: Patience = 10
    seed: Seed = 0

    @model_validator(mode="after")
    def _image_survives_the_pooling(self) -> CnnParams:
        # Each block halves the image; at least one pixel must be left for the dense layer.
        if self.image_size >> len(self.filters) < 1:
            raise ValueError(f"image_size {self.image_size} is too small for {len(self.filters)} blocks: "
                             f"each halves it; use at least {2 ** len(self.filters)}")
        return self


class FinetuneParams(_Params):
    """`finetune`: dlib's ResNet with its last blocks trained."""

    trainable_blocks: Annotated[int, Field(ge=0, le=RESNET_BLOCKS,
                                           description="last residual blocks of the ResNet to train")] = 2
    learning_rate: LearningRate = 1e-4
    epochs: Annotated[int, Field(ge=1, le=200, description="training passes over the data")] = 30
    batch_size: Annotated[int, Field(ge=1, le=1024, description="chips per training step")] = 32
    patience: Patience = 5
    seed: Seed = 0


MODEL_PARAM_SCHEMAS: dict[str, type[BaseModel]] = {
    "embedding": EmbeddingParams,
    "centroid": CentroidParams,
    "cnn": CnnParams,
    "finetune": FinetuneParams,
}


def validate_model_params(model_type: str, params: dict) -> dict:
    """The parameters given for model_type, checked: only those given (the model's defaults fill the
    rest). Raises ValueError naming the parameter and the bound it breaks."""
    schema = MODEL_PARAM_SCHEMAS.get(model_type)
    if schema is None:
        raise ValueError(f"unknown model type {model_type!r}: choose one of {', '.join(sorted(MODEL_PARAM_SCHEMAS))}")
    if not isinstance(params, dict):
        raise ValueError(f"model_params must be an object, got {type(params).__name__}")
    try:
        checked = schema.model_validate(params)
    except ValidationError as err:
        raise ValueError(_describe(model_type, schema, err)) from None
    return checked.model_dump(exclude_unset=True)


def _describe(model_type: str, schema: type[BaseModel], err: ValidationError) -> str:
    problems = []
    for error in err.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "model_params"
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(schema.model_fields) or "none"
            problems.append(f"unknown parameter {name!r} (parameters of {model_type}: {allowed})")
        else:
            message = error["msg"].removeprefix("Value error, ")
            given = repr(error.get("input"))
            given = given if len(given) <= 40 else given[:37] + "..."  # a hostile value may be long
            problems.append(f"{name}={given}: {message}" if error["loc"] else message)
    return f"invalid model_params for model type {model_type}: " + "; ".join(problems)
