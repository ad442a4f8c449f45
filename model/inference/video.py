"""Uploaded videos → frames for the model: the one video decoder, within limits.

Frames are read by `centermask_client.video.VideoReader` (PyAV), the reader the client uses to draw
answers over the same frames; each frame's pixels then take the one image path (`Predictor.prepare`,
the batcher, postprocessing) exactly as a decoded image does, so a frame's result equals `/segment`'s
on that frame. What this module adds is what a service needs from untrusted uploads:

- only MP4/MOV and Matroska/WebM containers, opened with their own demuxer (no format probing), and only
  the common decoders in `CODECS` (every FFmpeg parser is attack surface);
- limits read from the header before any frame is decoded (pixels per frame, duration) and checked again
  while decoding (a header can lie, or say nothing: a live-recorded WebM has no duration);
- failures as `VideoError` subclasses with messages safe to show to whoever sent the file (FFmpeg's own
  texts can name paths and internals), as `model.inference.images` does for images.

PyAV is an optional dependency (`centermask-serve[video]`): without it, `open_video` raises
VideoUnavailable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from centermask_client.video import Frame, VideoReader, container_format, import_av

# Decoders accepted: what cameras, phones, browsers (MediaRecorder) and encoders commonly write.
CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"})
SUPPORTED = "MP4, MOV, MKV or WebM with H.264, HEVC, VP8, VP9, AV1, MPEG-4 or MJPEG video"
# Leading bytes of formats that are recognisably not ours: named in a 415 rather than called corrupt.
_OTHER_FORMATS = (
    (b"RIFF", "AVI or WAV"),
    (b"FLV", "FLV"),
    (b"OggS", "Ogg"),
    (b"GIF8", "GIF"),
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x00\x00\x01\xba", "MPEG program stream"),
    (b"\x47", "MPEG transport stream"),
)


class VideoError(ValueError):
    """A video that cannot be used; the message is safe to show to whoever sent it."""


class CorruptVideo(VideoError):
    """Unidentifiable, truncated or corrupt data, or a container without frames."""


class UnsupportedVideo(VideoError):
    """Another container or codec, or no video stream."""


class FrameTooLarge(VideoError):
    """Width × height of a frame over the limit."""


class VideoTooLong(VideoError):
    """The video runs longer than the limit."""


class VideoUnavailable(VideoError):
    """PyAV is not installed: this installation cannot read videos."""


@dataclass(frozen=True)
class VideoLimits:
    max_pixels: int
    max_duration_s: float


def video_available() -> bool:
    try:
        import_av()
    except ImportError:
        return False
    return True


class CheckedVideo:
    """An opened video whose header passed the limits; `frames` decodes within them."""

    def __init__(self, reader: VideoReader, limits: VideoLimits) -> None:
        self._reader = reader
        self._limits = limits

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) as coded, before any display rotation."""
        return self._reader.height, self._reader.width

    @property
    def codec(self) -> str:
        return self._reader.codec

    @property
    def frame_rate(self) -> float | None:
        """Frames per second, as the header says (None when it does not)."""
        return self._reader.frame_rate

    def expected_frames(self, fps: float | None, max_frames: int | None) -> int | None:
        return self._reader.expected_frames(fps, max_frames)

    def frames(self, fps: float | None = None, max_frames: int | None = None) -> Iterator[Frame]:
        """The sampled frames (`VideoReader.frames`); raises CorruptVideo, FrameTooLarge or VideoTooLong
        when a frame breaks the file or the limits (the frames before it were good)."""
        av = import_av()
        frames = self._reader.frames(fps, max_frames)
        position = 0
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.error.FFmpegError:
                raise CorruptVideo(
                    f"cannot decode the video after {position} frames: it is truncated or corrupt"
                ) from None
            height, width = frame.pixels.shape[:2]
            if height * width > self._limits.max_pixels:
                raise FrameTooLarge(
                    f"frame {frame.index} has {width}×{height} pixels, more than the limit of "
                    f"{self._limits.max_pixels}"
                )
            if frame.time_s > self._limits.max_duration_s:
                raise VideoTooLong(
                    f"the video runs past the limit of {self._limits.max_duration_s:g} s (frame {frame.index} "
                    f"is at {frame.time_s:.3f} s)"
                )
            position = frame.index + 1
            yield frame

    def close(self) -> None:
        self._reader.close()


def open_video(data: bytes, limits: VideoLimits) -> CheckedVideo:
    """The video in `data`, its header checked against `limits`. Raises CorruptVideo, UnsupportedVideo,
    FrameTooLarge, VideoTooLong or VideoUnavailable."""
    if not video_available():
        raise VideoUnavailable(
            "this service cannot read videos: it was installed without PyAV (centermask-serve[video])"
        )
    if not data:
        raise CorruptVideo("the video is empty")
    if container_format(data[:16]) is None:
        for signature, name in _OTHER_FORMATS:
            if data.startswith(signature):
                raise UnsupportedVideo(f"{name} files are not supported; send {SUPPORTED}")
        raise CorruptVideo(f"cannot identify the video; send {SUPPORTED}")
    av = import_av()
    try:
        reader = VideoReader(data)
    except av.error.FFmpegError:
        raise CorruptVideo("cannot read the video's header: it is truncated or corrupt") from None
    except ValueError as error:  # the reader's own: no video stream
        raise UnsupportedVideo(f"{error}; send {SUPPORTED}") from None
    try:
        _check_header(reader, limits)
    except BaseException:
        reader.close()
        raise
    return CheckedVideo(reader, limits)


def _check_header(reader: VideoReader, limits: VideoLimits) -> None:
    if reader.codec not in CODECS:
        raise UnsupportedVideo(f"{reader.codec} video is not supported; send {SUPPORTED}")
    if reader.width < 1 or reader.height < 1:
        raise CorruptVideo("the video's header gives no frame size: it is truncated or corrupt")
    if reader.width * reader.height > limits.max_pixels:
        raise FrameTooLarge(
            f"the video's frames have {reader.width}×{reader.height} pixels, more than the limit of "
            f"{limits.max_pixels}"
        )
    duration = reader.duration_s
    if duration is not None and duration > limits.max_duration_s:
        raise VideoTooLong(
            f"the video lasts {duration:.1f} s, more than the limit of {limits.max_duration_s:g} s"
        )
