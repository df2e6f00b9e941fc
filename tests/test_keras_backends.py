"""MTCNN in Keras 3 (pipeline/mtcnn_keras.py) and the face ResNet on two Keras backends, on real LFW photos.

Under TensorFlow (this process) the Keras networks and the keras.ops resize and crop are checked against
the `mtcnn` package's networks and tf.image; then a fresh interpreter with KERAS_BACKEND=jax (the backend
is chosen when Keras is imported) runs the same stages with TensorFlow made unimportable, the whole
detector, and the face ResNet, and its results are checked against this process's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import mtcnn_keras
from pipeline.detect import PNET_THRESHOLD, FaceDetector, pyramid_scales

REPO = Path(__file__).resolve().parents[1]
PHOTO_COUNT = 32
CHIP_COUNT = 24
# The same float32 arithmetic in another order (convolution algorithms, fused multiply-adds).
NETWORK_TOLERANCE = 1e-5
# The resize and crop reproduce the kernels' formulas in float32: at most a rounding step apart.
HELPER_TOLERANCE = 1e-6
BACKEND_TOLERANCE = 1e-4
LANDMARK_TOLERANCE_PX = 0.5
MIN_COSINE = 0.9999


class PackageStages:
    """The mtcnn package's networks with tf.image, as detect.py ran them before mtcnn_keras, behind
    MTCNNNetworks' interface: the reference the Keras stages are held to."""

    def __init__(self) -> None:
        import tensorflow as tf

        pnet, rnet, onet = package_networks()

        @tf.function(reduce_retracing=True)
        def run_pnet(normalized, size):
            regression, classes = pnet(tf.image.resize(normalized, size, method="area"))
            return regression, classes[..., 1]

        @tf.function(reduce_retracing=True)
        def run_rnet(normalized, boxes, box_images):
            regression, classes = rnet(tf.image.crop_and_resize(normalized, boxes, box_images, (24, 24)))
            return regression, classes[:, 1]

        @tf.function(reduce_retracing=True)
        def run_onet(normalized, boxes, box_images):
            regression, landmarks, classes = onet(tf.image.crop_and_resize(normalized, boxes, box_images, (48, 48)))
            return regression, landmarks, classes[:, 1]

        self._pnet, self._rnet, self._onet = run_pnet, run_rnet, run_onet

    def pnet(self, normalized, size, threshold: float):
        regression, probabilities = (t.numpy() for t in self._pnet(normalized, np.asarray(size, np.int32)))
        cells = np.argwhere(probabilities > threshold)
        index = (cells[:, 0], cells[:, 1], cells[:, 2])
        return cells, regression[index], probabilities[index]

    def rnet(self, normalized, boxes, box_images):
        return [t.numpy() for t in self._rnet(normalized, np.float32(boxes), np.int32(box_images))]

    def onet(self, normalized, boxes, box_images):
        return [t.numpy() for t in self._onet(normalized, np.float32(boxes), np.int32(box_images))]


def face_detector(stages: type) -> FaceDetector:
    """detect.py's FaceDetector running the given stages (MTCNNNetworks or PackageStages) one by one, as
    under JAX (test_detect.py holds TensorFlow's one-graph detection to this)."""
    keras_stages = mtcnn_keras.MTCNNNetworks
    mtcnn_keras.MTCNNNetworks = stages
    try:
        return FaceDetector(graph=False)
    finally:
        mtcnn_keras.MTCNNNetworks = keras_stages


def keras_face_detector() -> FaceDetector:
    return face_detector(mtcnn_keras.MTCNNNetworks)


def faces_as_json(found) -> list[list[dict]]:
    return [[{"box": list(f.box), "score": f.score, "landmarks": f.landmarks.tolist()} for f in faces]
            for faces in found]


def normalize(photos: np.ndarray) -> np.ndarray:
    return (photos.astype(np.float32) - 127.5) / 128


def candidate_boxes(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (y1, x1, y2, x2, normalized) around where LFW's faces are, some reaching outside the
    photo as the detector's squared boxes do, and which photo each is on."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.3, 0.7, (count, 2))
    sides = rng.uniform(0.1, 0.9, (count, 1))
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1).astype(np.float32)
    return boxes, rng.integers(0, PHOTO_COUNT, count).astype(np.int32)


@pytest.fixture(scope="module")
def photos(lfw_dir) -> np.ndarray:
    """One photo each of the first PHOTO_COUNT people, (n, 250, 250, 3) uint8."""
    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir())[:PHOTO_COUNT]
    return np.stack([np.asarray(Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB")) for p in people])


def package_networks():
    """The mtcnn package's PNet, RNet and ONet with their weights, loaded as detect.py loaded them."""
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet
    from mtcnn.utils.tensorflow import load_weights

    networks = []
    for network, weights in ((PNet, "pnet.lz4"), (RNet, "rnet.lz4"), (ONet, "onet.lz4")):
        model = network()
        model.build()
        model.set_weights(load_weights(weights))
        networks.append(model)
    return networks


@pytest.fixture(scope="module")
def package_models():
    return package_networks()


@pytest.fixture(scope="module")
def keras_networks():
    return mtcnn_keras.load_networks()


def test_keras_networks_match_the_package_networks(photos, package_models, keras_networks):
    import tensorflow as tf

    normalized = normalize(photos)
    boxes, box_images = candidate_boxes(4 * PHOTO_COUNT)
    inputs = [tf.image.resize(normalized, (size, size), method="area")
              for size in (250 * pyramid_scales(250, 250, 20)).astype(int)[:3]]
    inputs = [(0, pyramid_level) for pyramid_level in inputs]
    inputs += [(1, tf.image.crop_and_resize(normalized, boxes, box_images, (24, 24))),
               (2, tf.image.crop_and_resize(normalized, boxes, box_images, (48, 48)))]
    for index, network_input in inputs:
        expected = package_models[index](network_input)
        found = keras_networks[index](network_input)
        assert len(found) == len(expected)
        for a, b in zip(found, expected):
            assert a.shape == b.shape
            assert np.abs(np.asarray(a) - np.asarray(b)).max() <= NETWORK_TOLERANCE, keras_networks[index].name


def test_area_resize_matches_tf_image_resize(photos):
    import tensorflow as tf

    # LFW's square photos and an oblong crop of them, at every pyramid level the detector uses.
    for batch in (normalize(photos[:8]), normalize(photos[:8, 31:218, 7:250])):
        height, width = batch.shape[1:3]
        for scale in pyramid_scales(width, height, 20):
            size = (np.asarray([height, width]) * scale).astype(np.int32)
            expected = tf.image.resize(batch, size, method="area").numpy()
            found = np.asarray(mtcnn_keras.area_resize(batch, tuple(size)))
            assert found.shape == expected.shape
            assert np.abs(found - expected).max() <= HELPER_TOLERANCE, (height, width, size)


def test_crop_and_resize_matches_tf_image_crop_and_resize(photos):
    import tensorflow as tf

    normalized = normalize(photos)
    boxes, box_images = candidate_boxes(200, seed=1)
    outside = np.mean((boxes < 0) | (boxes > 1))
    assert 0.05 < outside < 0.5  # the zeros outside the photo are exercised, not only the inside
    for crop_size in (24, 48):
        expected = tf.image.crop_and_resize(normalized, boxes, box_images, (crop_size, crop_size)).numpy()
        found = np.asarray(mtcnn_keras.crop_and_resize(normalized, boxes, box_images, crop_size))
        assert np.abs(found - expected).max() <= HELPER_TOLERANCE


def test_keras_stages_match_the_package_stages(photos):
    """MTCNNNetworks against the package's networks with tf.image: same windows, same outputs."""
    normalized = normalize(photos)
    stages, package_stages = mtcnn_keras.MTCNNNetworks(), PackageStages()
    for scale in pyramid_scales(250, 250, 20):
        size = tuple((np.asarray([250, 250]) * scale).astype(np.int32))
        expected = package_stages.pnet(normalized, size, PNET_THRESHOLD)
        found = stages.pnet(normalized, size, PNET_THRESHOLD)
        np.testing.assert_array_equal(found[0], expected[0])
        for a, b in zip(found[1:], expected[1:]):
            assert np.abs(a - b).max() <= NETWORK_TOLERANCE
    boxes, box_images = candidate_boxes(100, seed=2)
    for stage, package_stage in ((stages.rnet, package_stages.rnet), (stages.onet, package_stages.onet)):
        expected = package_stage(normalized, boxes, box_images)
        found = stage(normalized, boxes, box_images)
        for a, b in zip(found, expected):
            assert a.shape == b.shape and np.abs(a - b).max() <= NETWORK_TOLERANCE


def test_detector_with_keras_networks_finds_the_same_faces(photos):
    expected = face_detector(PackageStages).detect(list(photos))
    found = keras_face_detector().detect(list(photos))
    assert sum(map(len, expected)) >= PHOTO_COUNT
    assert_same_faces(faces_as_json(found), faces_as_json(expected), NETWORK_TOLERANCE)


def stage_outputs(networks, normalized, work: Path) -> dict[str, np.ndarray]:
    """Every output of the three stages on the inputs saved in work (pyramid sizes, boxes), by name."""
    outputs = {}
    for level, size in enumerate(np.load(work / "sizes.npy")):
        for name, array in zip(("cells", "regression", "scores"),
                               networks.pnet(normalized, tuple(size), PNET_THRESHOLD)):
            outputs[f"pnet{level}_{name}"] = array
    boxes, box_images = np.load(work / "boxes.npy"), np.load(work / "box_images.npy")
    for name, array in zip(("regression", "scores"), networks.rnet(normalized, boxes, box_images)):
        outputs[f"rnet_{name}"] = array
    for name, array in zip(("regression", "landmarks", "scores"), networks.onet(normalized, boxes, box_images)):
        outputs[f"onet_{name}"] = array
    return outputs


def assert_same_faces(found: list[list[dict]], expected: list[list[dict]], tolerance: float) -> None:
    assert [len(faces) for faces in found] == [len(faces) for faces in expected]
    for faces, expected_faces in zip(found, expected):
        for face, expected_face in zip(faces, expected_faces):
            assert np.abs(np.subtract(face["box"], expected_face["box"])).max() <= LANDMARK_TOLERANCE_PX
            assert np.abs(np.subtract(face["landmarks"], expected_face["landmarks"])).max() <= LANDMARK_TOLERANCE_PX
            assert abs(face["score"] - expected_face["score"]) <= tolerance


# Runs under KERAS_BACKEND=jax with TensorFlow unimportable (as on the GPU machines): the Keras stages,
# the whole detector, and the face ResNet as the embedder runs it.
JAX_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np

sys.modules["tensorflow"] = None  # import tensorflow now raises ImportError
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from pipeline import mtcnn_keras
from tests.test_keras_backends import faces_as_json, keras_face_detector, stage_outputs

work = Path(sys.argv[1])
photos = np.load(work / "photos.npy")
normalized = keras.ops.convert_to_tensor((photos.astype(np.float32) - 127.5) / 128)
np.savez(work / "jax_stages.npz", **stage_outputs(mtcnn_keras.MTCNNNetworks(), normalized, work))
found = keras_face_detector().detect(list(photos))
(work / "jax_faces.json").write_text(json.dumps(faces_as_json(found)))

from pipeline.align import ChipCutter
from pipeline.backend import networks_run_on_cpu
assert networks_run_on_cpu(None)  # JAX on its CPU platform alone: no GPU to ask about
landmarks = [np.asarray([face.landmarks for face in faces]).reshape(-1, 5, 2) for faces in found]
np.savez(work / "jax_landmarks.npz", *landmarks)
np.save(work / "jax_chips.npy", ChipCutter().cut(list(photos), landmarks))

from pipeline.face_resnet import FaceResNetEmbedder
# batch_size 16 on 24 chips: the second batch is padded to a compiled size and cut back.
np.save(work / "jax_embeddings.npy", FaceResNetEmbedder(sys.argv[2], batch_size=16).embed(np.load(work / "chips.npy")))
assert "tensorflow" not in {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
"""


@pytest.fixture(scope="module")
def jax_run(photos, lfw_dir, face_resnet_cache, tmp_path_factory) -> Path:
    """The JAX interpreter's results, in a folder; the inputs it was given are there too."""
    from bench.embedding import cut_chips_with_dlib

    work = tmp_path_factory.mktemp("jax")
    np.save(work / "photos.npy", photos)
    sizes = [(np.asarray([250, 250]) * s).astype(np.int32) for s in pyramid_scales(250, 250, 20)]
    np.save(work / "sizes.npy", np.stack(sizes))
    boxes, box_images = candidate_boxes(100, seed=3)
    np.save(work / "boxes.npy", boxes)
    np.save(work / "box_images.npy", box_images)
    np.save(work / "chips.npy", cut_chips_with_dlib(lfw_dir, CHIP_COUNT))
    from pipeline.face_resnet import load_face_resnet

    load_face_resnet(face_resnet_cache)  # converted here, so that the JAX run reads the same cached weights
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(work), str(face_resnet_cache)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return work


@pytest.mark.system
def test_jax_stages_match_tensorflow_stages(jax_run):
    """The same MTCNNNetworks under JAX (TensorFlow unimportable) and under TensorFlow."""
    jax_stages = np.load(jax_run / "jax_stages.npz")
    normalized = normalize(np.load(jax_run / "photos.npy"))
    expected = stage_outputs(mtcnn_keras.MTCNNNetworks(), normalized, jax_run)
    assert set(jax_stages.files) == set(expected)
    assert sum(len(expected[k]) for k in expected if k.endswith("_cells")) > 1000
    for key, array in expected.items():
        if key.endswith("_cells"):
            np.testing.assert_array_equal(jax_stages[key], array, err_msg=key)
        else:
            assert jax_stages[key].shape == array.shape, key
            assert np.abs(jax_stages[key] - array).max() <= BACKEND_TOLERANCE, key


@pytest.mark.system
def test_jax_detector_finds_the_same_faces_as_tensorflow(jax_run, photos):
    expected = faces_as_json(keras_face_detector().detect(list(photos)))
    found = json.loads((jax_run / "jax_faces.json").read_text())
    assert_same_faces(found, expected, BACKEND_TOLERANCE)


@pytest.mark.system
def test_face_resnet_under_jax_matches_tensorflow(jax_run, face_resnet_cache):
    from pipeline.face_resnet import FaceResNetEmbedder

    chips = np.load(jax_run / "chips.npy")
    expected = FaceResNetEmbedder(face_resnet_cache).embed(chips)
    found = np.load(jax_run / "jax_embeddings.npy")
    assert found.shape == expected.shape == (CHIP_COUNT, 128)
    cosines = np.sum(found * expected, axis=1) / np.linalg.norm(found, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= MIN_COSINE


@pytest.mark.system
def test_chips_cut_under_jax_match_tensorflow(jax_run):
    """align.ChipCutter, for GPU workers, on both backends: the same faces' chips to within one level."""
    from pipeline.align import ChipCutter

    photos = np.load(jax_run / "photos.npy")
    saved = np.load(jax_run / "jax_landmarks.npz")
    landmarks = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    expected = ChipCutter().cut(list(photos), landmarks)
    found = np.load(jax_run / "jax_chips.npy")
    assert found.shape == expected.shape and len(found) >= len(photos)
    apart = np.abs(found.astype(int) - expected.astype(int))
    assert apart.max() <= 1 and (apart > 0).mean() <= 1e-3


def test_a_batch_handed_to_tensorflow_keeps_its_values_after_the_array_is_gone():
    """on_device gives TensorFlow an aligned batch's memory without a copy; an unaligned or strided one
    is copied first. Either way the tensor holds the batch's values after the array is dropped."""
    import gc

    from pipeline.backend import aligned_empty, on_device

    rng = np.random.default_rng(3)
    expected = rng.integers(0, 256, (4, 50, 60, 3), dtype=np.uint8)
    aligned = aligned_empty(expected.shape)
    aligned[...] = expected
    assert aligned.ctypes.data % 64 == 0
    unaligned = np.frombuffer(b"\0" + expected.tobytes(), np.uint8, offset=1).reshape(expected.shape)
    strided = np.repeat(expected, 2, axis=2)[:, :, ::2]
    tensors = [on_device(batch) for batch in (aligned, unaligned, strided)]
    del aligned, unaligned, strided
    gc.collect()
    rng.integers(0, 256, (4, 50, 60, 3), dtype=np.uint8)  # memory freed above would likely be reused here
    for tensor in tensors:
        np.testing.assert_array_equal(np.asarray(tensor), expected)


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False")])
def test_the_pipeline_turns_on_tensorflows_onednn_kernels_unless_told_not_to(setting: str | None, expected: str):
    """TensorFlow turns oneDNN on by itself only on CPUs with AVX512_VNNI or newer; on others (an AMD EPYC
    with AVX2) it made detection 1.6x faster. It reads the setting once, when it is imported."""
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    script = ("import pipeline.detect, tensorflow\n"
              "from tensorflow.python.util import _pywrap_util_port\n"
              "print(_pywrap_util_port.IsMklEnabled())")
    result = subprocess.run([sys.executable, "-c", script], env={**env, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split()[-1] == expected
