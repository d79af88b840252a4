"""An external inpainting program for the `command` method's tests.

Usage: fill_script.py FRAMES_DIR MASKS_DIR OUT_DIR. Fills each frame's hole with the mean colour
of that frame's known pixels. FILL_MODE (environment) makes it misbehave: ``fail`` exits 3 with a
message on stderr, ``wrong-size`` writes frames two rows too tall, ``sleep`` hangs for a minute.
"""

import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

frames_dir, masks_dir, out_dir = map(Path, sys.argv[1:4])
mode = os.environ.get("FILL_MODE", "ok")
print(f"fill_script: mode {mode}", file=sys.stderr)
if mode == "fail":
    print("fill_script: model weights missing: /nowhere/weights.pt", file=sys.stderr)
    sys.exit(3)
if mode == "sleep":
    time.sleep(60)
for frame_file in sorted(frames_dir.glob("*.png")):
    frame = cv2.imread(str(frame_file), cv2.IMREAD_COLOR)
    hole = cv2.imread(str(masks_dir / frame_file.name), cv2.IMREAD_GRAYSCALE) > 0
    frame[hole] = frame[~hole].mean(axis=0) if (~hole).any() else 0
    if mode == "wrong-size":
        frame = np.concatenate([frame, frame[:2]])
    cv2.imwrite(str(out_dir / frame_file.name), frame)
