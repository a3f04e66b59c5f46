"""Write a list of RGB frames as a video a user can open: MP4 (H.264) or, without FFmpeg, a GIF.

``imageio-ffmpeg`` ships its own FFmpeg binary, so MP4 needs nothing from the system; where it
is missing or fails, the same frames go to a GIF (Pillow) beside the requested path.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from datamodules.files import atomic_path


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 with yuv420p needs even sizes: pad the last row/column by repetition."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _as_rgb(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=-1)
        if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
            raise ValueError(f"frame {i} has shape {frame.shape}; expected [H, W, 3] RGB (render_mode='rgb_array')")
        if frame.dtype != np.uint8:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(frame[..., :3]))
    return out


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 30.0) -> Path:
    """Write ``frames`` (``[H, W, 3]`` uint8 each) to ``path`` (``.mp4``) atomically and return
    the path written: ``path`` itself, or ``path`` with ``.gif`` when FFmpeg is unavailable
    (or when ``path`` ends in ``.gif``)."""
    path = Path(path)
    frames = _as_rgb(frames)
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    if path.suffix.lower() != ".gif":
        try:
            return _write_mp4(frames, path, fps)
        except (ImportError, OSError, RuntimeError) as err:
            warnings.warn(f"could not write {path} with FFmpeg ({type(err).__name__}: {err}); writing a GIF instead",
                          stacklevel=2)
            path = path.with_suffix(".gif")
    return _write_gif(frames, path, fps)


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    import imageio_ffmpeg

    frames = [_even(f) for f in frames]
    h, w = frames[0].shape[:2]
    with atomic_path(path) as tmp:
        # the temp name has no .mp4 suffix, so the container is named explicitly
        writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             macro_block_size=2, quality=7, output_params=["-f", "mp4"],
                                             ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            if frame.shape[:2] != (h, w):
                raise ValueError(f"frames change size ({frame.shape[:2]} after {(h, w)}); a video needs one size")
            writer.send(frame)
        writer.close()
    return path


def _write_gif(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)), loop=0)
    return path
