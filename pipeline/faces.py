"""Photos to faces: decode, detect, align and embed a batch of photos, timing each stage."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipeline.align import CHIP_SIZE, ChipCutter, align_faces
from pipeline.backend import networks_run_on_cpu
from pipeline.decode import DecodePool, Photo, decode_photos
from pipeline.detect import Face, FaceDetector, main_face
from pipeline.face_resnet import DESCRIPTOR_SIZE, FaceResNetEmbedder

# A batch ends at batch_size photos or at this many decoded pixels, whichever comes first: 32 LFW
# photos are 2 megapixels, while 32 photos of 4000x3000, even at the working size (2000x1500),
# would be 96 megapixels held at once (300 MB of pixels, and the detector's activations on top).
# 32 megapixels is about ten working-size photos; the detector cuts its own batches finer still.
MAX_BATCH_PIXELS = 32_000_000

# Threads that decode, detect and align batches while the embedding runs: detection's small ops leave
# cores idle that a second batch's detection uses.
DETECTION_THREADS = 2

# A photo where no face is found is searched again with a margin of this share of each side added around
# it, in mid grey: a face that fills the whole photo (a tight crop, no margin around the head) is one
# MTCNN's proposals, anchored inside the photo, can miss; the margin also fills the chip's border with
# grey rather than black. Only faces of at least RETRY_MIN_FACE of the padded photo's shorter side are
# looked for, which leaves out the pyramid's costliest levels. Photos with a face are never retried, so
# this changes nothing for them.
RETRY_MARGIN = 0.3
RETRY_MIN_FACE = 0.3
RETRY_FILL = 128


@dataclass
class PhotoFaces:
    """What the pipeline found in one photo: its faces, their aligned chips and embeddings, or the error."""

    key: str
    faces: list[Face] = field(default_factory=list)
    chips: np.ndarray = field(default_factory=lambda: np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8))
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, DESCRIPTOR_SIZE), np.float32))
    size: tuple[int, int] | None = None  # (width, height) of the original photo, upright; faces are in its coordinates
    error: str | None = None

    @property
    def main_face(self) -> int | None:
        """Index of the photo's subject among faces (see detect.main_face)."""
        return main_face(self.faces, *self.size) if self.size else None


class FacePipeline:
    """Decoding, MTCNN detection, alignment and embedding, batched across photos.

    batch_size is the photos per batch when process_stream is not told; with decode_processes, photos
    are decoded in that many processes (a DecodePool, started on first use) rather than on the
    detection threads: for GPU nodes, where decoding is what the CPU cores do. detection_threads batches
    are decoded, detected and aligned at once. Chips are cut on the networks' device in one call per
    batch (align.ChipCutter) when align_on_device, else by Pillow face by face on the host; by default
    on the device when the networks run on a GPU (on a CPU, Pillow's C loop is about 3 times cheaper than
    the gathers, and there is no host to spare).
    """

    def __init__(self, detector: FaceDetector, embedder: FaceResNetEmbedder, batch_size: int = 32,
                 decode_processes: int = 0, detection_threads: int = DETECTION_THREADS,
                 align_on_device: bool | None = None) -> None:
        self.detector = detector
        self.embedder = embedder
        self.batch_size = batch_size
        self.decode_processes = decode_processes
        self.detection_threads = detection_threads
        if align_on_device is None:
            align_on_device = not networks_run_on_cpu(detector.device)
        self.chip_cutter = ChipCutter(device=detector.device) if align_on_device else None
        self._decode_pool: DecodePool | None = None
        self.timings_ms: dict[str, float] = {}
        self._timing = threading.Lock()  # the detection threads and the embedding add to timings_ms

    @property
    def embedder_name(self) -> str:
        return self.embedder.name

    def process(self, photos: list[tuple[str, bytes]]) -> list[PhotoFaces]:
        """Find and embed every face in each (key, bytes) photo, as one batch. Broken photos get an
        error, not an exception."""
        return list(self.process_stream(photos, batch_size=max(1, len(photos))))

    def process_stream(self, photos: Iterable[tuple[str, bytes]], batch_size: int | None = None,
                       max_batch_pixels: int = MAX_BATCH_PIXELS) -> Iterator[PhotoFaces]:
        """process() over any number of photos, yielding one result per photo in order. A batch holds at
        most batch_size photos and max_batch_pixels decoded pixels (large photos make smaller batches).
        While the network embeds one batch, detection_threads threads decode, detect and align the next
        ones: detection's small TensorFlow ops leave cores idle that the embedding and another batch's
        detection use (one thread beside the embedding gave about 15% more photos per second on 2 cores).
        timings_ms adds up over the whole stream; "decode" includes waiting
        for the photos' bytes and, with decode processes, is only the time spent waiting for them."""
        batch_size = batch_size or self.batch_size
        self.timings_ms = {"decode": 0.0, "detect": 0.0, "align": 0.0, "embed": 0.0}
        batches = enumerate(self._decoded_batches(iter(photos), batch_size, max_batch_pixels))
        taking = threading.Lock()  # the batches are decoded by one thread at a time, in order

        def find_next() -> tuple[int, tuple] | None:
            with taking:
                numbered = next(batches, None)
            return None if numbered is None else (numbered[0], self._find(*numbered[1]))

        threads = self.detection_threads
        with ThreadPoolExecutor(threads, thread_name_prefix="face-detection") as detection:
            pending = [detection.submit(find_next) for _ in range(threads)]
            found: dict[int, tuple] = {}  # detected batches by number, until their turn to be embedded
            turn = 0
            while pending:
                numbered = pending.pop(0).result()
                if numbered is None:
                    continue
                pending.append(detection.submit(find_next))
                found[numbered[0]] = numbered[1]
                while turn in found:
                    yield from self._embed(*found.pop(turn))
                    turn += 1

    def _decoded_batches(self, photos: Iterator[tuple[str, bytes]], batch_size: int, max_batch_pixels: int
                         ) -> Iterator[tuple[list[PhotoFaces], dict[int, Photo]]]:
        """The photos decoded, in batches: each photo's result so far (its size, or its error) and the
        decoded photos by index in the batch. A photo that would take a batch over max_batch_pixels
        starts the next one (a photo larger than that alone is a batch of one)."""
        results: list[PhotoFaces] = []
        decoded: dict[int, Photo] = {}
        pixels = 0
        photos_decoded = self._decode(photos)
        while True:
            start = time.perf_counter()
            key, photo = next(photos_decoded, (None, None))
            self._tick("decode", start)
            if key is None:
                break
            result = PhotoFaces(key=key)
            if isinstance(photo, str):
                result.error, photo = photo, None
            else:
                result.size = (photo.width, photo.height)
            size = photo.pixels.shape[0] * photo.pixels.shape[1] if photo else 0
            if results and pixels + size > max_batch_pixels:
                yield results, decoded
                results, decoded, pixels = [], {}, 0
            if photo:
                decoded[len(results)] = photo
                pixels += size
            results.append(result)
            if len(results) >= batch_size:
                yield results, decoded
                results, decoded, pixels = [], {}, 0
        if results:
            yield results, decoded

    def _decode(self, photos: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, Photo | str]]:
        """(key, Photo or error message) for each photo, in order; the bytes are let go once decoded."""
        if self.decode_processes:
            if self._decode_pool is None:
                self._decode_pool = DecodePool(self.decode_processes)
            yield from self._decode_pool.decode(photos)
            return
        for key, data in photos:
            yield key, decode_photos([data])[0]

    def close(self) -> None:
        """Stop the decode processes, if any were started."""
        if self._decode_pool is not None:
            self._decode_pool.close()
            self._decode_pool = None

    def _find(self, results: list[PhotoFaces], decoded: dict[int, Photo]
              ) -> tuple[list[PhotoFaces], list[np.ndarray], list[int]]:
        """Detect and align a decoded batch: the photos' results so far, their faces' chips and each
        chip's photo."""

        start = time.perf_counter()
        order = list(decoded)
        detections = self.detector.detect([decoded[i].pixels for i in order]) if order else []
        # Pixels the faces were found in (a retried photo's padded pixels) and their offset in them.
        searched = {i: (decoded[i].pixels, 0, 0) for i in order}
        retry: dict[tuple, list[int]] = {}  # photos without a face, by shape: one detection per shape
        for i, faces in zip(order, detections):
            if not faces:
                retry.setdefault(decoded[i].pixels.shape, []).append(i)
        for same_shape in retry.values():
            padded = [_with_margin(decoded[i].pixels) for i in same_shape]
            min_face = max(self.detector.min_face_size, int(RETRY_MIN_FACE * min(padded[0][0].shape[:2])))
            found_again = self.detector.detect([pixels for pixels, _, _ in padded], min_face_size=min_face)
            for i, margined, faces in zip(same_shape, padded, found_again):
                if faces:
                    detections[order.index(i)], searched[i] = faces, margined
        self._tick("detect", start)

        start = time.perf_counter()
        owners = [index for index, faces in zip(order, detections) for _ in faces]
        if self.chip_cutter is not None:
            chips = list(self.chip_cutter.cut([searched[i][0] for i in order],
                                              [np.asarray([f.landmarks for f in faces]).reshape(-1, 5, 2)
                                               for faces in detections]))
        else:
            chips = [chip for index, faces in zip(order, detections)
                     for chip in align_faces(searched[index][0], [face.landmarks for face in faces])]
        for index, faces in zip(order, detections):
            photo = decoded[index]
            _, left, top = searched[index]
            # Chips are cut from the pixels the detector saw; results speak of the original photo.
            results[index].faces = [_in_original(_unpadded(face, left, top, photo), photo) for face in faces]
        self._tick("align", start)
        return results, chips, owners

    def _embed(self, results: list[PhotoFaces], chips: list[np.ndarray], owners: list[int]) -> list[PhotoFaces]:
        start = time.perf_counter()
        if chips:
            all_chips = np.stack(chips)
            embeddings = self.embedder.embed(all_chips)
            owners_array = np.asarray(owners)
            for index in set(owners):
                mine = owners_array == index
                results[index].chips, results[index].embeddings = all_chips[mine], embeddings[mine]
        self._tick("embed", start)
        return results

    def _tick(self, stage: str, start: float) -> None:
        with self._timing:
            self.timings_ms[stage] += (time.perf_counter() - start) * 1000


def _with_margin(pixels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The pixels inside a RETRY_MARGIN border of mid grey, and the offset (left, top) of the photo in them."""
    height, width = pixels.shape[:2]
    left, top = round(RETRY_MARGIN * width), round(RETRY_MARGIN * height)
    padded = np.pad(pixels, ((top, top), (left, left), (0, 0)), constant_values=RETRY_FILL)
    return padded, left, top


def _unpadded(face: Face, left: int, top: int, photo: Photo) -> Face:
    """A face found in the padded pixels, in the photo's own pixels: its box clipped to them (the
    detector clips boxes to what it saw); the landmarks, like the detector's, are not clipped."""
    if left == top == 0:
        return face
    height, width = photo.pixels.shape[:2]
    x, y, w, h = face.box
    x1, y1 = min(max(x - left, 0), width - 1), min(max(y - top, 0), height - 1)
    x2, y2 = min(max(x + w - left, 0), width - 1), min(max(y + h - top, 0), height - 1)
    return Face(box=(x1, y1, x2 - x1, y2 - y1), score=face.score, landmarks=face.landmarks - [left, top])


def _in_original(face: Face, photo: Photo) -> Face:
    """The face found in a photo's working-size pixels, with its box and landmarks in the original's
    coordinates (the same face when the photo was decoded at its own size)."""
    if photo.scale == (1.0, 1.0):
        return face
    x, y, width, height = face.box
    (left, top), (right, bottom) = photo.to_original(np.array([[x, y], [x + width, y + height]]))
    return Face(box=(float(left), float(top), float(right - left), float(bottom - top)), score=face.score,
                landmarks=photo.to_original(face.landmarks))
