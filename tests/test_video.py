"""Tests for src_core.video (lazy video frames, writer) and the napari video reader.

Videos are synthesized in temporary folders with ``write_video``: a gradient,
a moving bright square, and the frame number written as pixel intensities,
so a test can tell which frame it got despite compression.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from napari_sam._reader import get_reader
from src_core.video import VideoFrames, write_video

N_FRAMES, HEIGHT, WIDTH, FPS = 60, 48, 64, 30

# name -> write_video options. libx264 gets a short GOP and B-frames, so that
# seeks land on non-key frames.
CODECS = {
    "mp4": dict(codec="libx264", pix_fmt_out="yuv444p", output_params=["-qp", "0", "-g", "12"]),
    "mov": dict(codec="libx264", output_params=["-qp", "0", "-g", "10"]),
    "avi": dict(codec="mjpeg", pix_fmt_out="yuv444p", output_params=["-q:v", "2"]),
    "mkv": dict(codec="ffv1", pix_fmt_out="bgr0"),
}


def synthetic_frame(i: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Gradient, a bright square moving right, and an 8x8 block of grey 4*i."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = np.linspace(0, 200, width, dtype=np.uint8)[None, :]
    frame[..., 2] = np.linspace(0, 200, height, dtype=np.uint8)[:, None]
    x = 10 + i % (width - 20)
    frame[20:30, x:x + 10] = 255
    frame[:8, :8] = 4 * i
    return frame


def frame_number(frame: np.ndarray) -> float:
    return float(frame[2:6, 2:6].mean()) / 4


def write_test_video(path: Path, n: int = N_FRAMES, **options) -> Path:
    return write_video(path, (synthetic_frame(i) for i in range(n)), fps=FPS, **options)


def sequential_decode(path: Path) -> np.ndarray:
    """Every decoded frame, in order, by imageio-ffmpeg's own reader (no seeking).

    ``-fps_mode passthrough`` keeps one output frame per decoded frame (by
    default ffmpeg resamples variable-frame-rate video to a constant rate).
    """
    reader = imageio_ffmpeg.read_frames(str(path), output_params=["-fps_mode", "passthrough"])
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(b, np.uint8).reshape(height, width, 3) for b in reader])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {ext: write_test_video(folder / f"moving.{ext}", **opts) for ext, opts in CODECS.items()}


@pytest.fixture(scope="module")
def references(videos) -> dict[str, np.ndarray]:
    return {ext: sequential_decode(path) for ext, path in videos.items()}


# -- shape, content, indexing --------------------------------------------------------


@pytest.mark.parametrize("ext", CODECS)
def test_shape_dtype_len_and_metadata(videos, ext):
    with VideoFrames(videos[ext]) as frames:
        assert frames.shape == (N_FRAMES, HEIGHT, WIDTH, 3)
        assert frames.dtype == np.uint8
        assert frames.ndim == 4
        assert len(frames) == N_FRAMES
        assert frames.fps == pytest.approx(FPS)
        assert frames.exact_timestamps
        # Opening decoded frame 0 only (plus a probe of the last second).
        assert frames.frames_decoded == 1
        assert frames.frames_probed <= FPS + 3


@pytest.mark.parametrize("ext", CODECS)
def test_random_access_equals_sequential_decode(videos, references, ext):
    reference = references[ext]
    assert len(reference) == N_FRAMES
    rng = random.Random(ext)
    order = list(range(N_FRAMES))
    rng.shuffle(order)
    with VideoFrames(videos[ext], cache_size=4, max_forward_skip=5) as frames:
        for i in order:
            np.testing.assert_array_equal(frames[i], reference[i], err_msg=f"frame {i}")
        assert frames.reader_starts > 10  # it really did seek, back and forth
    # The frame-number block says it is the right frame despite compression.
    for i, frame in enumerate(reference):
        assert frame_number(frame) == pytest.approx(i, abs=0.75)


def test_lossless_video_round_trips(videos, references):
    # libx264 -qp 0 in yuv444p is lossless up to RGB<->YUV rounding.
    with VideoFrames(videos["mp4"]) as frames:
        for i in (0, 13, 59, 30):
            assert np.abs(frames[i].astype(int) - synthetic_frame(i)).max() <= 2
            assert frame_number(frames[i]) == pytest.approx(i, abs=0.25)


def test_negative_indices(videos, references):
    reference = references["mp4"]
    with VideoFrames(videos["mp4"]) as frames:
        for i in (-1, -2, -60, -31):
            np.testing.assert_array_equal(frames[i], reference[i])
        np.testing.assert_array_equal(frames[np.int64(-5)], reference[-5])


def test_slices_lists_and_tuples_index_like_numpy(videos, references):
    reference = references["mp4"]
    keys = [
        slice(10, 20), slice(None, None, -7), slice(50, None), slice(5, 5), slice(-3, None),
        range(3), range(58, 40, -6), [5, 1, 5], np.array([0, 59]), [],
        np.arange(N_FRAMES) % 7 == 0,                      # boolean mask over frames
        (5, slice(10, 20), slice(None), 0),                # one frame, a crop, channel 0
        (slice(0, 4), 3),                                   # one row of four frames
        (-1, Ellipsis, 1), (Ellipsis, 2), (slice(2, 4), Ellipsis),
        ([1, 2], 3), (3, [1, 2]), (slice(0, 3), slice(None), [1, 2], 0),
        (4, slice(None), [1, 2], 0), ([4, 6], slice(None), [1, 2], 0),
        np.int64(7), np.array(8), (np.int32(9), 0, 0),
    ]
    with VideoFrames(videos["mp4"], cache_size=8) as frames:
        for key in keys:
            got, want = frames[key], reference[key]
            assert got.shape == want.shape, key
            np.testing.assert_array_equal(got, want, err_msg=repr(key))
            assert got.flags.writeable  # a copy the caller owns


def test_bad_indices_raise_index_error(videos):
    with VideoFrames(videos["mp4"]) as frames:
        for key in (60, -61, [0, 60], 1.5, None, (0, 0, 0, 0, 0), True, "a",
                    np.ones(3, bool), (Ellipsis, Ellipsis)):
            with pytest.raises(IndexError):
                frames[key]


def test_results_do_not_alias_the_cache(videos, references):
    with VideoFrames(videos["mp4"]) as frames:
        first = frames[3]
        first[:] = 0
        np.testing.assert_array_equal(frames[3], references["mp4"][3])


def test_asarray_materializes_the_whole_video(videos, references):
    with VideoFrames(videos["avi"]) as frames:
        np.testing.assert_array_equal(np.asarray(frames), references["avi"])
        assert frames.reader_starts == 1  # it streamed with its own reader
        assert np.asarray(frames, dtype=np.float32).dtype == np.float32


def test_iter_frames_streams_without_touching_random_access(videos, references):
    with VideoFrames(videos["mkv"], cache_size=4) as frames:
        cached, starts = frames.cached_indices, frames.reader_starts
        streamed = list(frames.iter_frames(40, 50))
        np.testing.assert_array_equal(np.stack(streamed), references["mkv"][40:50])
        assert frames.cached_indices == cached and frames.reader_starts == starts
        assert len(list(frames)) == N_FRAMES


# -- reader positioning and cache ------------------------------------------------------


def test_forward_playback_does_not_restart_the_reader(videos):
    with VideoFrames(videos["mp4"]) as frames:
        assert frames.reader_starts == 1
        for i in range(N_FRAMES):
            frames[i]
        assert frames.reader_starts == 1
        assert frames.frames_decoded == N_FRAMES  # each frame decoded once
        frames[5]  # long evicted from the 32-frame cache: a backward jump
        assert frames.reader_starts == 2
        frames[6], frames[7], frames[8]
        assert frames.reader_starts == 2


def test_stepping_backwards_seeks_once_per_few_frames(videos, references):
    with VideoFrames(videos["mp4"], back_prefetch=8) as frames:
        frames[50]
        starts = frames.reader_starts
        for i in range(49, 33, -1):  # the slider stepped back 16 times
            np.testing.assert_array_equal(frames[i], references["mp4"][i])
        assert frames.reader_starts - starts == 2  # lands 8 frames early each time
    with VideoFrames(videos["mp4"], back_prefetch=0) as frames:
        frames[50]
        for i in range(49, 33, -1):
            frames[i]
        assert frames.reader_starts == 1 + 1 + 16


def test_far_forward_jump_seeks_instead_of_decoding_through(videos, references):
    with VideoFrames(videos["mp4"], max_forward_skip=10) as frames:
        decoded = frames.frames_decoded
        np.testing.assert_array_equal(frames[55], references["mp4"][55])
        assert frames.reader_starts == 2
        assert frames.frames_decoded - decoded <= 12  # about one GOP, not 55 frames
        frames[56]
        assert frames.reader_starts == 2


def test_cache_is_bounded_lru(videos):
    with VideoFrames(videos["mp4"], cache_size=5) as frames:
        for i in range(20):
            frames[i]
        assert frames.cached_indices == [15, 16, 17, 18, 19]
        decoded = frames.frames_decoded
        frames[16], frames[19], frames[15]  # hits: no decoding
        assert frames.frames_decoded == decoded
        assert frames.cached_indices == [17, 18, 16, 19, 15]
        frames[20]
        assert frames.cached_indices == [18, 16, 19, 15, 20]
    frame_bytes = HEIGHT * WIDTH * 3
    with VideoFrames(videos["mp4"], cache_bytes=3 * frame_bytes) as frames:
        for i in range(10):
            frames[i]
        assert frames.cached_indices == [7, 8, 9]
    with VideoFrames(videos["mp4"], cache_size=0) as frames:
        frames[1], frames[2]
        assert frames.cached_indices == []


def test_reads_from_several_threads_agree(videos, references):
    from concurrent.futures import ThreadPoolExecutor

    order = [random.Random(7).randrange(N_FRAMES) for _ in range(80)]
    with VideoFrames(videos["mp4"], cache_size=2) as frames:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(frames.__getitem__, order))
    for i, frame in zip(order, results):
        np.testing.assert_array_equal(frame, references["mp4"][i])


def test_close_and_context_manager(videos):
    with VideoFrames(videos["mp4"]) as frames:
        frames[3]
    assert frames.closed
    assert frames.cached_indices == []
    with pytest.raises(ValueError, match="closed"):
        frames[0]
    frames.close()  # twice is fine


# -- frame counts, variable frame rate, broken files -----------------------------------


def _vfr_options() -> dict:
    # Frames 30.. are shifted by half a second: a 15-frame gap in the timestamps.
    return dict(codec="libx264", output_params=[
        "-vf", "setpts='if(lt(N,30),N,N+15)/(30*TB)'", "-fps_mode", "vfr"])


def test_variable_frame_rate_mp4_is_detected_at_open(tmp_path):
    path = write_test_video(tmp_path / "vfr.mp4", **_vfr_options())
    reference = sequential_decode(path)
    assert len(reference) == N_FRAMES
    with VideoFrames(path) as frames:
        # mp4 says "24 fps, 30 tbr": average != nominal rate, so count frames.
        assert not frames.exact_timestamps
        assert len(frames) == N_FRAMES
        np.testing.assert_array_equal(frames[40], reference[40])
        assert frames.reader_starts == 1  # counting frames: forward jumps decode through
        for i in (50, 10, 59, 31, 29, 0, 40):
            np.testing.assert_array_equal(frames[i], reference[i])


def test_variable_frame_rate_mkv_is_corrected_when_found(tmp_path):
    path = write_test_video(tmp_path / "vfr.mkv", **_vfr_options())
    reference = sequential_decode(path)
    with VideoFrames(path) as frames:
        # mkv's header cannot tell; the count from timestamps says 75 frames.
        assert frames.exact_timestamps and len(frames) == N_FRAMES + 15
        np.testing.assert_array_equal(frames[40], reference[40])  # across the gap
        assert not frames.exact_timestamps
        assert len(frames) == N_FRAMES  # shape[0] corrected once
        for i in (59, 3, 31, 29):
            np.testing.assert_array_equal(frames[i], reference[i])
        with pytest.raises(IndexError):
            frames[70]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.mp4"):
        VideoFrames(tmp_path / "nothing.mp4")


@pytest.mark.parametrize("content", [b"", bytes(random.Random(1).randbytes(20_000))],
                         ids=["empty", "garbage"])
def test_not_a_video(tmp_path, content):
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"fake\.mp4 could not be read as a video.*Invalid data"):
        VideoFrames(path)


def test_file_without_video_stream(tmp_path):
    path = tmp_path / "no_frames.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (WIDTH, HEIGHT), ffmpeg_log_level="quiet")
    writer.send(None)
    writer.close()  # no frame sent: ffmpeg writes a file without a video stream
    with pytest.raises(ValueError, match="no_frames.mp4 has no video stream"):
        VideoFrames(path)


def test_truncated_mp4_fails_clearly_at_open(videos, tmp_path):
    data = videos["mov"].read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])  # the index (moov atom) is at the end
    with pytest.raises(ValueError, match=r"half\.mp4 could not be read.*moov atom not found"):
        VideoFrames(path)


def test_truncated_mkv_gives_the_readable_frames(videos, references, tmp_path):
    data = videos["mkv"].read_bytes()
    path = tmp_path / "half.mkv"
    path.write_bytes(data[: len(data) // 2])
    with VideoFrames(path) as frames:
        # The header still says 2 s; the probe finds where the data really ends.
        assert 5 < len(frames) < N_FRAMES
        n = len(frames)
        for i in (n - 1, 0, n // 2):
            np.testing.assert_array_equal(frames[i], references["mkv"][i])
        with pytest.raises(IndexError, match="out of range"):
            frames[n]


# -- writer ----------------------------------------------------------------------------


def test_write_video_renames_only_when_complete(tmp_path):
    seen = []

    def frames():
        for i in range(10):
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            yield synthetic_frame(i)

    path = write_video(tmp_path / "out.avi", frames(), fps=12.5, codec="mjpeg",
                       pix_fmt_out="yuv444p")
    assert path == tmp_path / "out.avi"
    assert all("out.avi" not in names for names in seen)  # only a temp name meanwhile
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.avi"]
    with VideoFrames(path) as video:
        assert video.shape == (10, HEIGHT, WIDTH, 3) and video.fps == pytest.approx(12.5)


def test_write_video_grey_frames_and_bad_input(tmp_path):
    grey = [np.full((16, 16), 10 * i, np.uint8) for i in range(5)]
    with VideoFrames(write_video(tmp_path / "grey.mkv", grey, codec="ffv1",
                                 pix_fmt_out="gray")) as video:
        assert video.shape == (5, 16, 16, 3)
        assert video[3][..., 0].mean() == pytest.approx(30, abs=1)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "a.mp4", [])
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "b.mp4", [np.zeros((16, 16, 3), np.float32)])
    with pytest.raises(ValueError, match="even width and height"):
        write_video(tmp_path / "c.mp4", [np.zeros((15, 16, 3), np.uint8)])
    with pytest.raises(ValueError, match="frame 1"):
        write_video(tmp_path / "d.mp4", [np.zeros((16, 16, 3), np.uint8)] * 1
                    + [np.zeros((32, 16, 3), np.uint8)])
    with pytest.raises(ValueError, match="no video encoder 'no_such_codec'"):
        write_video(tmp_path / "e.mp4", [np.zeros((16, 16, 3), np.uint8)] * 3,
                    codec="no_such_codec")
    with pytest.raises(RuntimeError, match="could not write"):  # ffmpeg rejects the options
        write_video(tmp_path / "e.mp4", [np.zeros((16, 16, 3), np.uint8)] * 3,
                    codec="libx264", output_params=["-no_such_option", "1"])
    with pytest.raises(FileNotFoundError):
        write_video(tmp_path / "missing" / "f.mp4", grey)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.mkv"]  # no leftovers


# -- long video ------------------------------------------------------------------------


def _numbered_tiny_frame(i: int) -> np.ndarray:
    """32x32: four 8x8 blocks hold the frame number's hex digits (grey 16*d + 8)."""
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[8:, :, 1] = np.arange(24, dtype=np.uint8)[:, None] * 8
    for k in range(4):
        frame[:8, 8 * k:8 * k + 8] = 16 * ((i >> (4 * (3 - k))) & 15) + 8
    return frame


def _read_tiny_number(frame: np.ndarray) -> int:
    digits = [round((frame[2:6, 8 * k + 2:8 * k + 6].mean() - 8) / 16) for k in range(4)]
    return sum(int(d) << (4 * (3 - k)) for k, d in enumerate(digits))


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_long_video_opens_lazily_with_bounded_memory(tmp_path):
    n = 10_000
    start = time.perf_counter()
    path = write_video(tmp_path / "long.mp4", (_numbered_tiny_frame(i) for i in range(n)),
                       fps=25, codec="libx264", output_params=["-preset", "ultrafast", "-qp", "0"])
    write_s = time.perf_counter() - start
    assert write_s < 15, f"writing 10,000 frames took {write_s:.1f} s"

    gc.collect()
    rss_before = _rss_bytes()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        frames = VideoFrames(path)
        open_s = time.perf_counter() - start
        assert frames.shape == (n, 32, 32, 3)
        assert open_s < 2.0, f"opening took {open_s:.2f} s"
        assert frames.frames_decoded == 1 and frames.frames_probed < 100

        start = time.perf_counter()
        for i in (0, 1, 2, 3, 4999, 5000, 5001, 4998, 9999, 9998, -3, 7777, 123, 2500):
            assert _read_tiny_number(frames[i]) == i % n, i
        read_s = time.perf_counter() - start
        assert frames.frames_decoded < 300  # a few seeks, never a run through the file
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    frames.close()
    decoded_all = n * 32 * 32 * 3  # 30 MB if it were all decoded
    assert peak < decoded_all / 10, f"peak traced memory {peak / 1e6:.1f} MB"
    assert _rss_bytes() - rss_before < 25e6
    print(f"\nlong video: write {write_s:.2f} s, open {open_s:.3f} s, 14 reads {read_s:.3f} s, "
          f"peak {peak / 1e6:.2f} MB")


# -- napari reader ---------------------------------------------------------------------


def test_get_reader_accepts_videos_only(tmp_path):
    for name in ("a.mp4", "b.AVI", "c.Mov", "d.mkv"):
        assert callable(get_reader(str(tmp_path / name)))
    for path in ("a.png", "a.mp4.txt", "video", ["a.mp4", "b.mp4"]):
        assert get_reader(path if isinstance(path, list) else str(tmp_path / path)) is None


def test_reader_returns_a_lazy_rgb_layer(videos):
    [(data, meta, layer_type)] = get_reader(str(videos["mp4"]))(str(videos["mp4"]))
    try:
        assert layer_type == "image"
        assert isinstance(data.source, VideoFrames) and not isinstance(data, np.ndarray)  # lazy, read frame by frame
        assert data.shape == (N_FRAMES, HEIGHT, WIDTH, 3)
        assert meta["name"] == "moving" and meta["rgb"] is True
        assert meta["metadata"] == {"fps": pytest.approx(FPS), "path": str(videos["mp4"])}
    finally:
        data.close()


@pytest.mark.gui
def test_napari_opens_video_and_slider_shows_frames(make_napari_viewer, videos, references):
    from napari.layers import Image

    viewer = make_napari_viewer()
    layers = viewer.open(str(videos["mp4"]), plugin="napari-sam")
    assert len(layers) == 1 and isinstance(layers[0], Image)
    layer = layers[0]
    assert isinstance(layer.data.source, VideoFrames)
    assert layer.rgb and layer.data.shape == (N_FRAMES, HEIGHT, WIDTH, 3)
    assert layer.metadata["fps"] == pytest.approx(FPS)
    assert viewer.dims.nsteps[0] == N_FRAMES
    for k in (17, 3, 59, 18):
        viewer.dims.set_point(0, k)
        shown = np.asarray(layer._slice.image.raw)
        np.testing.assert_array_equal(shown, references["mp4"][k])
    assert layer.data.source.frames_decoded < 30  # napari did not read the whole video


@pytest.mark.gui
def test_a_damaged_frame_shows_black_with_one_notification(make_napari_viewer, monkeypatch):
    """Issue 28: a truncated video printed an IndexError traceback and kept a stale frame."""
    from napari_sam._reader import ShownFrames

    warnings_ = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings_.append)

    class Truncated:  # what VideoFrames does past the last frame it can decode
        shape, dtype = (20, 24, 32, 3), np.uint8

        def __getitem__(self, key):
            key = key if isinstance(key, tuple) else (key,)
            frames = range(20)[key[0]] if isinstance(key[0], slice) else [key[0]]
            if any(t >= 15 for t in frames):
                raise IndexError(f"frame {max(frames)} could not be decoded: the file ends at frame 14")
            stack = np.full((len(frames), 24, 32, 3), 100, np.uint8)
            return stack[(slice(None), *key[1:])] if isinstance(key[0], slice) else stack[0][key[1:]]

    frames = ShownFrames(Truncated(), "clip.mp4")
    viewer = make_napari_viewer()
    layer = viewer.add_image(frames, rgb=True, name="clip")
    for t in (19, 18, 19):  # the user drags the slider to the end and back
        viewer.dims.current_step = (t, 0, 0)
    assert not np.asarray(layer._slice.image.view)[..., :3].any()  # black, not the stale frame 14
    assert sum("Frame 19 of clip.mp4 cannot be read" in w for w in warnings_) == 1  # once per frame
    assert sum("Frame 18" in w for w in warnings_) == 1
    viewer.dims.current_step = (3, 0, 0)
    assert np.asarray(layer._slice.image.view)[..., :3].min() == 100
    with pytest.raises(IndexError):  # work that must stop on it (tracking) reads the source
        frames.source[19]
