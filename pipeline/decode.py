"""Safe image decoding: bytes in, an RGB uint8 array out, or an ImageError that names the problem.

Large photos are decoded downscaled to a working size (see WORKING_SIDE), so that memory per photo is
bounded by what the detector needs, not by what the camera wrote; `decode_photo` says how big the
original was, so that boxes can be reported in the original photo's coordinates.
"""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 50_000_000
MIN_SIDE = 16

# Longest side, in pixels, that photos are decoded to for face detection. MTCNN finds faces of 20
# pixels and up, so at 2,000 pixels a face is still found when it spans 1% of the photo's longest side
# (40 pixels in a 4000x3000 photo); and a 4-megapixel working photo keeps the detector's memory near
# 250 MB and its time at a few seconds per photo on one CPU core, where a full 50 megapixels took 4 GB.
# LFW's 250x250 photos, and anything up to 2000 pixels, are decoded at their own size, untouched.
WORKING_SIDE = 2000

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that brings the stored pixels upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """The input is not a usable photo; the message says why."""


@dataclass
class Photo:
    """A decoded photo: pixels at the working size, and the upright size of the original."""

    pixels: np.ndarray  # (h, w, 3) uint8 RGB, upright
    width: int  # of the original photo, upright
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from pixel coordinates to the original photo's: 1.0 when not downscaled."""
        return self.width / self.pixels.shape[1], self.height / self.pixels.shape[0]

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) pixel coordinates in `pixels` -> the same points in the original photo. Pixel
        centres map onto pixel centres, as Pillow's resize maps them."""
        scale = np.asarray(self.scale)
        if np.all(scale == 1.0):
            return np.asarray(points, dtype=np.float64)
        return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5


def decode_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                 min_side: int = MIN_SIDE, max_side: int | None = None) -> np.ndarray:
    """Decode photo bytes to an (H, W, 3) uint8 RGB array, upright according to its EXIF orientation;
    with max_side, downscaled (keeping its aspect) so that its longest side is at most max_side.

    Raises ImageError for empty, oversized, truncated, non-image or too-small input.
    """
    return decode_photo(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side,
                        max_side=max_side).pixels


def decode_photo(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                 min_side: int = MIN_SIDE, max_side: int | None = WORKING_SIDE) -> Photo:
    """decode_image, by default at the working size, with the original photo's upright size.

    The pixel limit is checked on the header, before any pixel is allocated (decompression bombs).
    A JPEG above max_side is decoded already reduced (Pillow's draft mode: the decoder scales the
    DCT by 1/2, 1/4 or 1/8), so a 7000x7000 JPEG never occupies 150 MB; other formats are decoded
    whole and then reduced, one photo at a time.
    """
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"file too large: {len(data)} bytes, limit {max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow warns before it raises on decompression bombs; we enforce our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image too large: {width}x{height} pixels, limit {max_pixels}")
            if min(width, height) < min_side:
                raise ImageError(f"image too small: {width}x{height} pixels, need at least {min_side} on each side")
            target = _fitted(width, height, max_side)
            if target:
                image.draft(None, target)  # a no-op for formats other than JPEG
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION)
        image = _rgb(_eight_bit(image))
        if target and image.size != target:
            image = image.resize(target, Image.Resampling.BICUBIC)
        if orientation in UPRIGHT:
            image = image.transpose(UPRIGHT[orientation])
            if orientation >= 5:  # the transposes that swap the sides
                width, height = height, width
        pixels = np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image: the bytes are in no format Pillow can read") from None
    except Image.DecompressionBombError:
        # Pillow refuses headers far above its own limit before we read the size.
        raise ImageError(f"image too large: far more than the limit of {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"corrupt or truncated image: {err}") from None
    except Exception as err:  # noqa: BLE001 - any other failure of a decoder on hostile bytes is this photo's problem
        raise ImageError(f"unreadable image ({type(err).__name__}): {err}") from None
    return Photo(pixels, width, height)


def _fitted(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """The size that fits (width, height) within max_side on its longest side, or None if it fits already."""
    if max_side is None or max(width, height) <= max_side:
        return None
    ratio = max_side / max(width, height)
    return max(1, math.floor(width * ratio + 0.5)), max(1, math.floor(height * ratio + 0.5))


def _eight_bit(image: Image.Image) -> Image.Image:
    """Grey images of more than 8 bits per pixel brought to 8 bits by their range, not clipped at 255.

    Pillow opens a 16-bit grey PNG or TIFF as I;16 (or I), whose values run to 65535, and converts
    it to RGB by clipping: almost white. 16-bit RGB(A) PNGs Pillow already opens as 8-bit RGB(A).
    For 32-bit I and F, whose range the file does not say, the range is the smallest of 1 (floats),
    255, 65535 that holds the photo's brightest pixel, else that pixel.
    """
    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.float32) / 257.0
    elif image.mode in ("I", "F"):
        values = np.asarray(image).astype(np.float32)
        brightest = float(values.max(initial=0.0))
        ranges = ([1.0] if image.mode == "F" else []) + [255.0, 65535.0]
        full = next((r for r in ranges if brightest <= r), brightest)
        values *= 255.0 / full
    else:
        return image
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    # Flatten transparency onto white rather than black, as a viewer shows it.
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def decode_photos(photos: list[bytes]) -> list[Photo | str]:
    """decode_photo on each photo: the Photo, or the ImageError's message (what a pool process sends back)."""
    decoded: list[Photo | str] = []
    for data in photos:
        try:
            decoded.append(decode_photo(data))
        except ImageError as err:
            decoded.append(str(err))
    return decoded


class DecodePool:
    """Photos decoded in a pool of processes, in order, a bounded number ahead of the reader.

    On a GPU node decoding is the CPU's share of the work: one process decodes about 1,300 LFW photos/s,
    far below what the GPU detects and embeds, so it is spread over processes (threads would hold the GIL
    through Pillow's Python-side work). Photos travel in groups of `group` to keep the messages few. The
    processes are spawned, not forked: the parent holds the backend's threads, which fork does not copy.

    A pool process that dies (the out-of-memory killer, a crash in a decoder) breaks the whole pool, or,
    killed while it wrote a result, hangs it: either way (or after timeout_s) the pool is started again, the
    group's photos are decoded again one at a time, and a photo on which a process dies even alone gets an
    error naming that, so the other photos are kept, the pool keeps working and the job ends.
    """

    def __init__(self, processes: int, group: int = 16, groups_ahead_per_process: int = 4,
                 timeout_s: float = 120) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self.processes = processes
        self.group = group
        # A group not back by then is taken as lost: a process killed while it wrote its result leaves the
        # pool waiting for the rest of the message forever. (A group takes well under a second; a photo at
        # the pixel limit a few seconds.)
        self.timeout_s = timeout_s
        self.ahead = processes * groups_ahead_per_process
        self.restarts = 0
        self._executor = self._start()

    def decode(self, photos: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, Photo | str]]:
        """(key, Photo or error message) for each (key, bytes), in the order given."""
        photos = iter(photos)
        pending: deque = deque()  # (keys, photos' bytes, future) of each group in flight, in order
        while True:
            while len(pending) < self.ahead and (group := list(islice(photos, self.group))):
                data = [photo for _, photo in group]
                pending.append(([key for key, _ in group], data, self._submit(data)))
            if not pending:
                return
            keys, data, future = pending.popleft()
            try:
                decoded = future.result(timeout=self.timeout_s)
            except (BrokenProcessPool, TimeoutError):
                decoded = self._decode_after_a_death(data)
                # The groups still in flight were lost with the pool: send them again.
                pending = deque((k, d, self._submit(d)) for k, d, _ in pending)
            yield from zip(keys, decoded)

    def close(self) -> None:
        self._executor.shutdown(cancel_futures=True)

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_exit_with_parent, initargs=(os.getpid(),))

    def _restart(self) -> None:
        # Kill what is left of the old pool: a hung pool's processes would otherwise run on, and its
        # result reader, waiting on their pipe, gets its end of file only once they are gone.
        for process in list(getattr(self._executor, "_processes", {}).values()):
            process.kill()
        # A process killed halfway through writing a result leaves the executor's reader thread waiting for the
        # rest of the message; that thread then never ends, and the interpreter waits for it at exit, forever.
        # Its end of file comes once no process holds the pipe's writing end: the killed processes no longer
        # do; this process does until it closes its own.
        results = getattr(self._executor, "_result_queue", None)
        if results is not None:
            results._writer.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._start()
        self.restarts += 1

    def _submit(self, data: list[bytes]) -> Future:
        with _children_allowed():  # a submit may start a process
            try:
                return self._executor.submit(decode_photos, data)
            except BrokenProcessPool:  # a process died since the last result: the groups in flight will say so
                self._restart()
                return self._executor.submit(decode_photos, data)

    def _decode_after_a_death(self, data: list[bytes]) -> list[Photo | str]:
        """A group whose process died: each photo alone in a fresh pool, nothing else in flight, so that a
        photo on which a process dies again is that photo."""
        self._restart()
        decoded: list[Photo | str] = []
        for photo in data:
            try:
                decoded.extend(self._submit([photo]).result(timeout=self.timeout_s))
            except (BrokenProcessPool, TimeoutError):
                self._restart()
                decoded.append("the decoding process died or hung on this photo "
                               "(out of memory, or a crash in the decoder)")
        return decoded


def _exit_with_parent(parent: int) -> None:
    """In a pool process: exit once the parent is gone (killed, say, by Celery's time limit or the OOM
    killer). Its pipes would not tell: every pool process holds both ends of the queue of work."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let this process start the pool's processes even when it is one of Celery's prefork children, which
    multiprocessing refuses twice: the child is daemonic (its children could be orphaned), and its key
    is billiard's, which cannot be pickled for a spawned child. For the moment of a submit, the process
    is not daemonic and its key is multiprocessing's. The pool's processes are not orphaned: each exits
    when its parent is gone (_exit_with_parent; tests/test_decode_pool.py kills a prefork-like parent)."""
    current = multiprocessing.current_process()
    config = current._config
    if not config.get("daemon") and type(config.get("authkey")) is multiprocessing.process.AuthenticationString:
        yield
        return
    current._config = {**{k: v for k, v in config.items() if k != "daemon"},
                       "authkey": multiprocessing.process.AuthenticationString(bytes(config["authkey"]))}
    try:
        yield
    finally:
        current._config = config
