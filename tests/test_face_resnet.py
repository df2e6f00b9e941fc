"""The Keras port of dlib's face ResNet against dlib itself, on real LFW faces."""

import numpy as np
import pytest

from bench.embedding import cosine_similarities, cut_chips_with_dlib, dlib_descriptors, dlib_face_model
from pipeline import face_resnet
from pipeline.face_resnet import (
    ACCURATE,
    CHIP_SIZE,
    DESCRIPTOR_SIZE,
    PLAIN,
    Crop,
    FaceResNetEmbedder,
    load_face_resnet,
    preprocess_chips,
)

PARITY_CHIP_COUNT = 60
MIN_COSINE = 0.9999


@pytest.fixture(scope="session")
def lfw_chips(lfw_dir) -> np.ndarray:
    """Chips cut by dlib from LFW photos of different people."""
    chips = cut_chips_with_dlib(lfw_dir, PARITY_CHIP_COUNT)
    assert len(chips) == PARITY_CHIP_COUNT
    return chips


@pytest.fixture(scope="session")
def embedder(face_resnet_cache) -> FaceResNetEmbedder:
    # Batches of 16 leave a partial last batch for 60 chips, which the test then covers.
    return FaceResNetEmbedder(face_resnet_cache, batch_size=16)


@pytest.fixture(scope="session")
def dlib_reference(lfw_chips) -> np.ndarray:
    return dlib_descriptors(dlib_face_model(), lfw_chips)


def assert_parity(ours: np.ndarray, reference: np.ndarray, label: str) -> None:
    cosines = cosine_similarities(ours, reference)
    print(f"\n{label}, {len(cosines)} faces: min cosine {cosines.min():.7f}, "
          f"max |difference| {np.max(np.abs(ours - reference)):.2e}")
    assert cosines.min() >= MIN_COSINE


def test_embedder_matches_dlib(lfw_chips, dlib_reference, embedder):
    ours = embedder.embed(lfw_chips)
    assert ours.shape == (PARITY_CHIP_COUNT, DESCRIPTOR_SIZE)
    assert ours.dtype == np.float32
    assert_parity(ours, dlib_reference, "embedder (affine folded into the convolutions)")


def test_unfolded_network_matches_dlib(lfw_chips, dlib_reference, face_resnet_cache):
    model = load_face_resnet(face_resnet_cache)
    ours = np.asarray(model(preprocess_chips(lfw_chips), training=False))
    assert_parity(ours, dlib_reference, "network with dlib's affine layers")


def test_empty_input_gives_no_descriptors(embedder):
    descriptors = embedder.embed(np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8))
    assert descriptors.shape == (0, DESCRIPTOR_SIZE)


def test_converted_weights_are_cached_per_converter_version(tmp_path, monkeypatch):
    converted = load_face_resnet(tmp_path)
    cache_file = tmp_path / f"face_resnet_v{face_resnet.CONVERTER_VERSION}.weights.h5"
    written_at = cache_file.stat().st_mtime_ns

    def refuse_to_read(path):
        raise AssertionError(f"the cached weights should have been used, not {path}")

    with monkeypatch.context() as patch:
        patch.setattr(face_resnet, "read_network", refuse_to_read)
        cached = load_face_resnet(tmp_path)
    assert cache_file.stat().st_mtime_ns == written_at
    for converted_weights, cached_weights in zip(converted.get_weights(), cached.get_weights(), strict=True):
        np.testing.assert_array_equal(converted_weights, cached_weights)

    monkeypatch.setattr(face_resnet, "CONVERTER_VERSION", face_resnet.CONVERTER_VERSION + 1)
    load_face_resnet(tmp_path)
    new_cache_file = tmp_path / f"face_resnet_v{face_resnet.CONVERTER_VERSION}.weights.h5"
    # Both versions' files and no leftover temporary file.
    assert sorted(tmp_path.iterdir()) == sorted([cache_file, new_cache_file])


def test_mirroring_averages_the_descriptors_of_the_chip_and_its_mirror_image(lfw_chips, embedder, face_resnet_cache):
    chips = lfw_chips[:8]
    mirrored = FaceResNetEmbedder(face_resnet_cache, mirror=True)
    expected = (embedder.embed(chips) + embedder.embed(chips[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(mirrored.embed(chips), expected, atol=1e-5)
    assert mirrored.name != embedder.name  # a model version records which descriptor it was trained on


def test_the_default_embedder_embeds_the_chip_alone_as_dlib_does(lfw_chips, dlib_reference, face_resnet_cache):
    """The accurate mode is opt-in: without crops, descriptors are the chip's own (dlib's, to float rounding)."""
    default = FaceResNetEmbedder(face_resnet_cache)
    assert default.crops == PLAIN
    assert "crops" not in default.name
    assert_parity(default.embed(lfw_chips), dlib_reference, "default embedder")


def test_a_crop_moves_magnifies_and_turns_the_chip_content() -> None:
    import keras

    dot = np.zeros((1, CHIP_SIZE, CHIP_SIZE, 1), np.float32)
    dot[0, 40, 60] = 1.0  # row (y) 40, column (x) 60; the chip's centre is (74.5, 74.5)

    def where(crop: Crop) -> tuple[int, int]:
        moved = np.asarray(keras.ops.image.affine_transform(dot, crop.sampling_transform()))[0, :, :, 0]
        y, x = np.unravel_index(moved.argmax(), moved.shape)
        return int(x), int(y)

    assert where(Crop()) == (60, 40)
    assert where(Crop(dx=3)) == (63, 40)
    assert where(Crop(dy=-3)) == (60, 37)
    assert where(Crop(scale=2)) == (45, 5)  # twice as far from the centre
    assert where(Crop(angle=90)) == (40, 89)  # upper left of the centre to lower left: counter-clockwise


def test_crops_average_the_descriptors_of_each_view_and_its_mirror(lfw_chips, face_resnet_cache):
    import keras

    chips = lfw_chips[:4]
    crops = (Crop(), Crop(dx=3), Crop(scale=1.05))
    accurate = FaceResNetEmbedder(face_resnet_cache, mirror=True, crops=crops)
    single = FaceResNetEmbedder(face_resnet_cache, mirror=True)
    views = []
    for crop in crops:
        # The view as the embedder cuts it, then scaled back to uint8 chips for the plain embedder.
        view = keras.ops.image.affine_transform(chips.astype(np.float32), crop.sampling_transform(),
                                                fill_mode="nearest")
        views.append(single.embed(np.clip(np.round(np.asarray(view)), 0, 255).astype(np.uint8)))
    np.testing.assert_allclose(accurate.embed(chips), np.mean(views, axis=0), atol=2e-3)
    assert accurate.name != single.name and "crops" in accurate.name
    assert len(ACCURATE) > 1 and ACCURATE[0] == Crop()


def test_bfloat16_descriptors_are_float32_ones_to_within_rounding(lfw_chips, face_resnet_cache):
    """The bfloat16 network is a different computation (its convolutions run in bfloat16), whose descriptors
    stay within cosine 0.9999 of float32's (the issue's bar is 0.999; measured 0.99997) and keep the name."""
    float32 = FaceResNetEmbedder(face_resnet_cache)
    bfloat16 = FaceResNetEmbedder(face_resnet_cache, precision="bfloat16")
    assert (float32.precision, bfloat16.precision) == ("float32", "bfloat16")
    convolutions = [layer for layer in bfloat16.model.layers if layer.__class__.__name__ == "Conv2D"]
    assert convolutions and {layer.compute_dtype for layer in convolutions} == {"bfloat16"}
    assert bfloat16.model.get_layer("embedding").compute_dtype == "float32"

    expected, found = float32.embed(lfw_chips), bfloat16.embed(lfw_chips)
    assert found.dtype == np.float32
    assert not np.array_equal(found, expected)
    assert_parity(found, expected, "bfloat16 against float32")
    assert bfloat16.name == float32.name


def test_auto_precision_is_bfloat16_only_on_a_cpu_that_has_it_natively() -> None:
    from pipeline.backend import cpu_has_native_bfloat16, resolved_precision

    native = "bfloat16" if cpu_has_native_bfloat16() else "float32"
    assert resolved_precision("auto", "cpu:0") == native
    assert resolved_precision("auto", "gpu:0") == "float32"
    assert resolved_precision("float32", "cpu:0") == "float32"
    assert resolved_precision("bfloat16", "gpu:0") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolved_precision("float16", None)
