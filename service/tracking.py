"""Track ids across the frames of one video or stream connection (`track=true`).

ByteTrack (Zhang et al., ECCV 2022), as the `supervision` library ships it (`sv.ByteTrack`), is fed each
frame's boxes and scores in frame order and numbers the objects it follows. Facts this module settles:

- one `Tracker` per video request or stream connection, never shared: its ids count from `first_id` (1);
- association is by box IoU against each track's Kalman-predicted box (a constant-velocity model, one step
  per tracked frame), high-scoring boxes first, then lower ones; classes and masks are not used, so a
  track keeps its id when the model changes its mind about the class;
- a track that finds no box for more than `LOST_TRACK_S` seconds of tracked frames ends (the library
  counts int(rate × LOST_TRACK_S) frames, from the frame after the last that found it): the object, seen
  again, gets a new id. The frame rate turns those seconds into frames: a video's effective rate (its own,
  or `fps=` when that samples it slower; measured from frame times when the header has none), a stream's
  rate of tracked frames as measured from their times;
- ids are given when a track is confirmed: on the first frame at once, later on an object's second
  frame. An instance without one (its first frame, or a box the tracker does not follow) is kept, with
  None (null on the wire): detections are never dropped.

Why supervision 0.30: ByteTrack left supervision in 0.31 for roboflow's `trackers` package, which requires
opencv-python, the GUI build that clashes with this project's opencv-python-headless over the `cv2`
module (and needs libGL, which the image lacks). 0.30's ByteTrack is the same algorithm and needs no
OpenCV; it warns that it is deprecated, which is silenced here.

Importing supervision takes about two seconds (it loads scipy's interpolation for its annotators): `load`
is called off the event loop, once; without the `track` extra it raises TrackingUnavailable.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import NotImplementedHere

EXTRA = "centermask-serve[track]"
# ByteTrack's settings (the library's defaults): the lost-track buffer in seconds (its 30 frames at 30 fps),
# the score a box needs to start a track (+0.1), the IoU cost under which a box matches a track.
LOST_TRACK_S = 1.0
ACTIVATION_SCORE = 0.25
MATCHING_THRESHOLD = 0.8
# A stream's rate is measured over its last this many tracked frames; until two are in, this is assumed.
RATE_WINDOW = 30
ASSUMED_RATE = 30.0

_loaded: Any = None
_lock = threading.Lock()


class TrackingUnavailable(ImportError):
    """supervision is not installed: this installation cannot track."""


def load() -> Any:
    """The supervision module (imported once; blocking, ~2 s the first time), or TrackingUnavailable."""
    global _loaded
    with _lock:
        if _loaded is None:
            try:
                supervision = importlib.import_module("supervision")
            except ImportError:
                raise TrackingUnavailable(
                    f"this service cannot track: it was installed without supervision ({EXTRA})"
                ) from None
            warnings.filterwarnings(
                "ignore", message="The `ByteTrack` was deprecated", category=FutureWarning
            )
            _loaded = supervision
        return _loaded


def loaded() -> bool:
    """Whether supervision is imported already (then `load` does not block)."""
    return _loaded is not None


def load_or_refuse() -> None:
    """`load`, or the service's 501 `not_implemented` naming the extra. Blocking: run it in the CPU pool."""
    try:
        load()
    except TrackingUnavailable as error:
        raise NotImplementedHere(str(error)) from None


class Tracker:
    """The tracks of one video or stream: `update` with each frame's instance records, in frame order.

    frame_rate: of the frames given to `update`; None measures it from their times.
    first_id: the first track id to give (a stream that restarts tracking goes on from its last id).
    """

    def __init__(self, frame_rate: float | None, *, first_id: int = 1) -> None:
        supervision = load()
        self._supervision = supervision
        self._byte_track = supervision.ByteTrack(
            track_activation_threshold=ACTIVATION_SCORE,
            lost_track_buffer=round(LOST_TRACK_S * 30),
            minimum_matching_threshold=MATCHING_THRESHOLD,
            frame_rate=frame_rate or ASSUMED_RATE,
            minimum_consecutive_frames=1,
        )
        self._offset = first_id - 1
        self.last_id = first_id - 1
        """The highest id given so far (first_id - 1 before any)."""
        self._times: deque[float] | None = None if frame_rate else deque(maxlen=RATE_WINDOW)

    @property
    def frame_rate(self) -> float:
        """The rate the lost-track buffer is counted in, frames per second."""
        return float(self._byte_track.max_time_lost) / LOST_TRACK_S

    def update(self, instances: Sequence[dict[str, Any]], time_s: float) -> list[int | None]:
        """The track id of each instance record (`box`, `score`), in their order; None where the tracker
        has not confirmed the instance. `time_s`: when the frame was taken (only a measured rate uses it)."""
        if self._times is not None:
            self._measure(time_s)
        count = len(instances)
        detections = self._supervision.Detections(
            xyxy=np.array([instance["box"] for instance in instances], np.float32).reshape(count, 4),
            confidence=np.array([instance["score"] for instance in instances], np.float32),
            class_id=np.array([instance["class_id"] for instance in instances], int),
            data={"index": np.arange(count)},
        )
        tracked = self._byte_track.update_with_detections(detections)
        ids: list[int | None] = [None] * count
        if len(tracked):
            for index, track_id in zip(
                tracked.data["index"].tolist(), tracked.tracker_id.tolist(), strict=True
            ):
                ids[index] = track_id + self._offset
            self.last_id = max(self.last_id, *(i for i in ids if i is not None))
        return ids

    def _measure(self, time_s: float) -> None:
        assert self._times is not None
        self._times.append(time_s)
        span = self._times[-1] - self._times[0]
        if len(self._times) >= 2 and span > 0:
            rate = (len(self._times) - 1) / span
            # What sv.ByteTrack computes from its frame_rate (int(frame_rate / 30 * lost_track_buffer)),
            # with the rate measured so far.
            self._byte_track.max_time_lost = max(1, int(rate * LOST_TRACK_S))
