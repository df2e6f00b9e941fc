"""Face quality: how well a face can be recognised, from its size, sharpness, pose and detector confidence.

Each face gets four parts and a verdict:
- interocular_px: the distance between the eyes in the original photo's pixels (the face's size);
- sharpness: the variance of the Laplacian of the aligned grey chip's face region divided by the variance of
  its grey values (detail at the finest scale against overall contrast, so a dark or flat-lit face is not
  called blurred); the chip is what the network sees, so a small face enlarged to the chip is soft too;
- yaw and pitch in degrees, estimated from the five landmarks (see pose());
- confidence: the detector's face probability.

The verdict is `ok` or the first failing reason, in this order: `too_small` (interocular_px below
MIN_INTEROCULAR_PX), `blurred` (sharpness below MIN_SHARPNESS), `profile` (|yaw| above MAX_YAW or |pitch|
above MAX_PITCH), `low_confidence` (confidence below MIN_CONFIDENCE). The score in [0, 1] is the product of
one factor per part: a logistic of the part's value that is 0.5 at its threshold and rises towards 1 as
the part improves, so the score grows with every part and a face at one threshold and perfect otherwise
scores about 0.5.

The thresholds were chosen on LFW photos that LFW's verification pairs (pairs.txt) do not use, by
`python -m bench.quality_tuning` (bench/results/quality_tuning.json): the pairs measure the score
(`python -m bench.quality`) on photos it was not chosen on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.align import CHIP_TEMPLATE
from pipeline.detect import Face

OK = "ok"
TOO_SMALL = "too_small"
BLURRED = "blurred"
PROFILE = "profile"
LOW_CONFIDENCE = "low_confidence"
VERDICTS = (OK, TOO_SMALL, BLURRED, PROFILE, LOW_CONFIDENCE)

# The rule's thresholds, chosen by `python -m bench.quality_tuning` on the 5,532 LFW photos pairs.txt does not
# use (bench/results/quality_tuning.json): a part fails where the error of tuning pairs reaches twice their
# error as they are (0.71%, cosine distance, 7,002 pairs). Shrunk faces: 1.33% wrong at 12 px between the eyes,
# 1.67% at 10, 6.8% at 8. Blurred faces: 0.67% wrong at a blur of 1 px (median sharpness 0.0122), 1.83% at 2 px
# (0.0044): the threshold lies between, at their geometric mean. Pairs whose worse face is turned 35 degrees or
# more: 1.75% wrong (286 pairs; 1.33% from 30 degrees).
MIN_INTEROCULAR_PX = 12.0
MIN_SHARPNESS = 0.0074
MAX_YAW = 35.0  # degrees
# Too few tuning pairs are tilted that far to choose it by that rule (MIN_TAIL_PAIRS 25): 1.37% wrong from 30
# degrees (146 pairs), 2 of 23 wrong from 35; set to 35, as yaw.
MAX_PITCH = 35.0  # degrees
# No tuning pair with a face below any edge was wrong more often (none of 68 below 0.95): the detector's own
# minimum (FaceDetector.min_score), below which it keeps a face only when the photo has no other.
MIN_CONFIDENCE = 0.9

# How fast each part's factor in the score rises from 0.5 at its threshold (one logistic unit of the value):
# to 0.95 at twice the size or sharpness threshold (both compared on a log scale, as ratios), at 15 degrees
# inside a pose threshold, at 0.06 above the confidence threshold.
SIZE_WIDTH = math.log(2) / math.log(19)
SHARPNESS_WIDTH = math.log(2) / math.log(19)
POSE_WIDTH = 15 / math.log(19)  # degrees
CONFIDENCE_WIDTH = 0.06 / math.log(19)

# The face region of the 150x150 chip whose sharpness is measured: eyebrows to chin, cheek to cheek,
# leaving out the background the chip's corners show.
SHARPNESS_REGION = (slice(25, 125), slice(25, 125))
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])

# A frontal face's landmarks, from the chip template (LFW's average face): where the nose tip falls
# between the eye line and the mouth line (about 0.53), and the eye-to-mouth height per interocular distance.
_EYES, _NOSE, _MOUTH = CHIP_TEMPLATE[:2].mean(axis=0), CHIP_TEMPLATE[2], CHIP_TEMPLATE[3:].mean(axis=0)
FRONTAL_NOSE_HEIGHT = float((_NOSE[1] - _EYES[1]) / (_MOUTH[1] - _EYES[1]))
FACE_HEIGHT = float((_MOUTH[1] - _EYES[1]) / (CHIP_TEMPLATE[1, 0] - CHIP_TEMPLATE[0, 0]))
# How far the nose tip stands in front of the eyes and mouth, per interocular distance: a rough
# anthropometric average. Turning the head moves the tip off the line of the eyes and mouth by this depth
# times the sine of the angle, which is what yaw and pitch are read from.
NOSE_DEPTH = 0.5


@dataclass(frozen=True)
class Quality:
    score: float  # in [0, 1], higher is better
    verdict: str  # OK or the first failing reason
    interocular_px: float
    sharpness: float
    yaw: float  # degrees; positive: the nose points to the image's right
    pitch: float  # degrees; positive: the face tilts up (the nose tip nears the eye line)
    confidence: float

    def to_json(self) -> dict:
        return {"score": round(self.score, 4), "verdict": self.verdict,
                "interocular_px": round(self.interocular_px, 1), "sharpness": round(self.sharpness, 4),
                "yaw": round(self.yaw, 1), "pitch": round(self.pitch, 1), "confidence": round(self.confidence, 4)}


def face_quality(face: Face, chip: np.ndarray) -> Quality:
    """The quality of a detected face (landmarks in the original photo's coordinates) and its aligned chip."""
    landmarks = np.asarray(face.landmarks, dtype=np.float64)
    return rate(interocular_px=float(np.linalg.norm(landmarks[1] - landmarks[0])), sharpness=sharpness(chip),
                yaw_pitch=pose(landmarks), confidence=float(face.score))


def rate(interocular_px: float, sharpness: float, yaw_pitch: tuple[float, float], confidence: float) -> Quality:
    """The verdict and score of a face's parts (the rule in the module's docstring)."""
    yaw, pitch = yaw_pitch
    if interocular_px < MIN_INTEROCULAR_PX:
        verdict = TOO_SMALL
    elif sharpness < MIN_SHARPNESS:
        verdict = BLURRED
    elif abs(yaw) > MAX_YAW or abs(pitch) > MAX_PITCH:
        verdict = PROFILE
    elif confidence < MIN_CONFIDENCE:
        verdict = LOW_CONFIDENCE
    else:
        verdict = OK
    factors = (
        _logistic(_log_ratio(interocular_px, MIN_INTEROCULAR_PX) / SIZE_WIDTH),
        _logistic(_log_ratio(sharpness, MIN_SHARPNESS) / SHARPNESS_WIDTH),
        _logistic((MAX_YAW - abs(yaw)) / POSE_WIDTH),
        _logistic((MAX_PITCH - abs(pitch)) / POSE_WIDTH),
        _logistic((confidence - MIN_CONFIDENCE) / CONFIDENCE_WIDTH),
    )
    return Quality(float(np.prod(factors)), verdict, interocular_px, sharpness, yaw, pitch, confidence)


def passes(quality: Quality | dict, min_quality: float) -> bool:
    """Whether a face is good enough to learn from or index at min_quality (0 keeps every face). quality is
    a Quality or its to_json()."""
    score = quality["score"] if isinstance(quality, dict) else quality.score
    return score >= min_quality


def sharpness(chip: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the chip's grey face region over the variance of its grey values."""
    grey = np.asarray(chip, dtype=np.float64)[SHARPNESS_REGION] @ GREY_WEIGHTS
    laplacian = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]) - 4 * grey[1:-1, 1:-1]
    return float(laplacian.var() / max(grey.var(), 1e-6))


def pose(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees from the five landmarks (eyes, nose tip, mouth corners), in the frame of the
    eye line so that a tilted head (roll) reads as neither.

    Yaw: the nose tip's offset from the face's midline (the middle of the eyes and mouth corners) per
    interocular distance is NOSE_DEPTH * tan(yaw). Pitch: the nose tip's height between the eye line and the
    mouth line moves from FRONTAL_NOSE_HEIGHT by NOSE_DEPTH / FACE_HEIGHT * tan(pitch). Estimates from a rough
    average face, good for ranking faces and for the rule's thresholds, not measurements of the head."""
    points = np.asarray(landmarks, dtype=np.float64)
    across = points[1] - points[0]
    interocular = max(float(np.linalg.norm(across)), 1e-6)
    across /= interocular
    down = np.array([-across[1], across[0]])  # image y points down: this is down the face when upright
    eyes = points[:2].mean(axis=0)
    x = (points - eyes) @ across / interocular
    y = (points - eyes) @ down / interocular
    midline = (x[0] + x[1] + x[3] + x[4]) / 4
    yaw = math.degrees(math.atan((x[2] - midline) / NOSE_DEPTH))
    mouth = max((y[3] + y[4]) / 2, 1e-6)
    pitch = math.degrees(math.atan((FRONTAL_NOSE_HEIGHT - y[2] / mouth) * FACE_HEIGHT / NOSE_DEPTH))
    return yaw, pitch


def _logistic(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(value, 50.0), -50.0)))


def _log_ratio(value: float, threshold: float) -> float:
    return math.log(max(value, 1e-9) / threshold)
