"""Videos read and written with PyAV (FFmpeg's libraries in a wheel; `pip install centermask-client[video]`).

The service decodes uploaded videos with `VideoReader` (through `model.inference.video`, which adds its
limits), and `centermask segment clip.mp4 --format png` decodes the same file with it again to draw the
answers over the frames: the same code on both sides, so a line's `frame` names the same pixels.

Facts this module settles once:
- the container is recognised by its leading bytes and opened with that demuxer only: ISO base media
  (MP4, MOV, M4V) or Matroska (MKV, WebM). FFmpeg never probes other formats on our behalf, several of
  which (playlists, concatenation) would open further files or URLs named inside the upload;
- `Frame.index` counts every decoded frame from 0, in presentation order, whether or not it is sampled;
- `Frame.time_s` is the frame's timestamp in seconds from the stream's start (index / frame rate when the
  frame has none);
- `fps=` keeps the first frame of each 1/fps-second interval of that timeline;
- frames are turned upright by the stream's display rotation (multiples of 90°, as phones record), as
  EXIF orientation turns images; flips in the display matrix are ignored.

Importing this module does not import PyAV; opening a video does (ImportError naming the extra if absent).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

VideoSource = str | os.PathLike | bytes | IO[bytes]

# What file names `centermask segment` treats as videos.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm"})
# ISO base media files (MP4, MOV) start with a box: 4 bytes of size, then its type.
_ISO_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"})
_MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"
# The sampling interval's floor is taken a hair above the timestamp: 0.3 s × 10 fps is 2.9999999 in floats.
_EPSILON = 1e-6


def container_format(head: bytes) -> str | None:
    """The FFmpeg demuxer for a file starting with `head` (its first 12 bytes suffice): "mov" (MP4,
    MOV, M4V) or "matroska" (MKV, WebM); None for anything else."""
    if head.startswith(_MATROSKA_MAGIC):
        return "matroska"
    if len(head) >= 8 and head[4:8] in _ISO_BOXES:
        return "mov"
    return None


def media_type(head: bytes) -> str:
    """A Content-Type for a video's bytes (the service decides by the bytes; this only labels the upload)."""
    found = container_format(head)
    if found == "matroska":
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if found == "mov":
        return "video/quicktime" if head[8:10] == b"qt" else "video/mp4"
    return "application/octet-stream"


def video_bytes(source: VideoSource) -> tuple[bytes, str]:
    """A video's bytes to upload (a path's contents, bytes, or a binary file's rest) and a Content-Type for
    them (`media_type`); an unrecognised file is labelled video/mp4, for the service to say what is wrong."""
    if isinstance(source, str | os.PathLike):
        data = Path(source).read_bytes()
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise TypeError("file objects must be opened in binary mode ('rb')")
    else:
        raise TypeError(
            f"cannot send a value of type {type(source).__name__} as a video: pass a path, bytes or a file"
        )
    content_type = media_type(data[:64])
    return data, "video/mp4" if content_type == "application/octet-stream" else content_type


def import_av() -> Any:
    """PyAV, or an ImportError saying which extra brings it."""
    try:
        import av
    except ImportError:
        raise ImportError(
            "reading videos needs PyAV: pip install 'centermask-client[video]' (or 'centermask-serve[video]')"
        ) from None
    return av


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its position among all decoded frames, its time, and (H, W, 3) uint8 RGB pixels."""

    index: int
    time_s: float
    pixels: np.ndarray


class VideoReader:
    """The first video stream of an MP4, MOV, MKV or WebM file, frame by frame.

    Raises ValueError for bytes that are no such container, and PyAV's errors (`av.error.FFmpegError`,
    a ValueError too) for one FFmpeg cannot read. Not thread-safe: use it from one thread at a time.
    """

    def __init__(self, source: VideoSource) -> None:
        av = import_av()
        if isinstance(source, bytes | bytearray | memoryview):
            import io

            stream: IO[bytes] | str = io.BytesIO(bytes(source))
            head = bytes(source[:16])
        elif isinstance(source, str | os.PathLike):
            stream = str(Path(source))
            with open(stream, "rb") as file:
                head = file.read(16)
        else:
            stream = source
            position = source.tell()
            head = source.read(16)
            source.seek(position)
        demuxer = container_format(head)
        if demuxer is None:
            raise ValueError("not an MP4, MOV, MKV or WebM file")
        # PyAV's InputContainer (typed loosely: PyAV is optional, and the type checker may run without it).
        self.container: Any = av.open(stream, mode="r", format=demuxer)
        try:
            if not self.container.streams.video:
                raise ValueError("the file has no video stream")
            self.stream = self.container.streams.video[0]
        except BaseException:
            self.container.close()
            raise
        self.demuxer = demuxer

    @property
    def codec(self) -> str:
        return str(self.stream.codec_context.name)

    @property
    def width(self) -> int:
        """The coded width (before any display rotation), as the stream's header says."""
        return int(self.stream.codec_context.width)

    @property
    def height(self) -> int:
        return int(self.stream.codec_context.height)

    @property
    def frame_rate(self) -> float | None:
        rate = self.stream.average_rate or self.stream.guessed_rate
        return float(rate) if rate else None

    @property
    def duration_s(self) -> float | None:
        """The stream's duration from the header (or the container's); None when neither says."""
        if self.stream.duration is not None and self.stream.time_base is not None:
            return float(self.stream.duration * self.stream.time_base)
        if self.container.duration is not None:
            return self.container.duration / 1_000_000
        return None

    def expected_frames(self, fps: float | None = None, max_frames: int | None = None) -> int | None:
        """How many frames `frames(fps, max_frames)` should give, from the header; None when it does not say.

        An estimate: a header's frame count or duration can be wrong, and variable-rate video samples
        unevenly.
        """
        count: int | None = int(self.stream.frames) or None
        duration, rate = self.duration_s, self.frame_rate
        if count is None and duration is not None and rate is not None:
            count = max(1, round(duration * rate))
        if count is not None and fps is not None and duration is not None:
            count = min(count, max(1, math.ceil(duration * fps - _EPSILON)))
        if max_frames is not None:
            count = max_frames if count is None else min(count, max_frames)
        return count

    def frames(self, fps: float | None = None, max_frames: int | None = None) -> Iterator[Frame]:
        """The frames in presentation order, upright; with `fps`, the first of each 1/fps-second interval;
        at most `max_frames` of them."""
        start = self.stream.start_time
        origin = float(start * self.stream.time_base) if start is not None and self.stream.time_base else 0.0
        rate = self.frame_rate
        last_interval = -1
        given = 0
        if max_frames is not None and max_frames < 1:
            return
        for index, frame in enumerate(self.container.decode(self.stream)):
            time_s = frame.time - origin if frame.time is not None else index / (rate or 1.0)
            if fps is not None:
                interval = math.floor(time_s * fps + _EPSILON)
                if interval <= last_interval:
                    continue
                last_interval = interval
            yield Frame(index, max(0.0, time_s), upright(frame.to_ndarray(format="rgb24"), frame.rotation))
            given += 1
            # Checked after the frame, not before the next: nothing beyond the last wanted frame is decoded.
            if max_frames is not None and given >= max_frames:
                return

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def upright(pixels: np.ndarray, rotation: float) -> np.ndarray:
    """Pixels turned by a display rotation (degrees counterclockwise, PyAV's `VideoFrame.rotation`)."""
    quarter_turns = round(rotation / 90) % 4 if rotation and rotation % 90 == 0 else 0
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


# What `write_video` writes for each suffix: the muxer, and the encoders to try in order (PyAV's wheels
# have them all; other FFmpeg builds may lack the first).
_WRITERS = {
    ".mp4": ("mp4", ("libx264", "mpeg4")),
    ".m4v": ("mp4", ("libx264", "mpeg4")),
    ".mov": ("mov", ("libx264", "mpeg4")),
    ".mkv": ("matroska", ("libx264", "libvpx-vp9", "mpeg4")),
    ".webm": ("webm", ("libvpx", "libvpx-vp9")),
}


def write_video(path: str | os.PathLike, frames: Iterable[tuple[float, np.ndarray]], *, rate: float) -> int:
    """Encode (time in seconds, (H, W, 3) uint8 RGB) frames into the container the suffix names (.mp4,
    .m4v, .mov: H.264; .mkv: H.264; .webm: VP8); each frame keeps its time, so sampled frames keep the
    source's timeline. `rate` is the nominal frame rate players show. Odd sizes are padded by a black row
    or column (4:2:0 needs even ones). Returns the number of frames written."""
    av = import_av()
    suffix = Path(path).suffix.lower()
    if suffix not in _WRITERS:
        raise ValueError(
            f"cannot write {suffix or 'a file without suffix'}: use one of {', '.join(_WRITERS)}"
        )
    muxer, encoders = _WRITERS[suffix]
    codec = next((name for name in encoders if name in av.codecs_available), encoders[-1])
    time_base = Fraction(1, 1000)
    written = 0
    with av.open(str(path), mode="w", format=muxer) as container:
        stream: Any = None
        last_pts = -1
        for time_s, pixels in frames:
            height, width = pixels.shape[:2]
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(rate).limit_denominator(1000))
                stream.width, stream.height = width + width % 2, height + height % 2
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = time_base
                if codec.startswith("libvpx"):
                    # libvpx's default ("good", the slowest speed) takes seconds per second of video.
                    stream.options = {"deadline": "realtime", "cpu-used": "8"}
            even = np.zeros((stream.height, stream.width, 3), np.uint8)
            even[:height, :width] = pixels
            frame = av.VideoFrame.from_ndarray(even, format="rgb24")
            # Timestamps must increase: two frames within a millisecond keep their order.
            last_pts = max(last_pts + 1, round(time_s * 1000))
            frame.pts, frame.time_base = last_pts, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
            written += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return written
