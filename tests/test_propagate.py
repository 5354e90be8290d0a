"""Propagation engine (src_core.propagate), measured with the ground-truth stand-in segmenter.

The stand-in (src_core.propagate.standin) answers every prompt with the
ground-truth object under it, degraded by boundary noise and occasional
failures, so these tests measure the tracking logic (prompts, QC, search,
identities, directions, key frames) independently of any weights. Outputs,
bad input and resuming are covered here too; metrics are checked against
py-motmetrics in tests/test_propagate_metrics.py and the real model runs end to
end in tests/test_propagate_model.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from src_core.propagate import (
    KEY,
    LOST,
    REFOUND,
    STATUSES,
    TABLE_COLUMNS,
    TRACKED,
    LabelFile,
    ObjectPrompt,
    PropagationError,
    TrackingWriter,
    evaluate,
    load_prompts,
    paint_labels,
    prompts_from_labels,
    propagate,
    propagate_volume,
    read_table,
    resume_prompts,
    save_prompts,
    segment_volume,
    tracks_data,
    write_overlay_video,
)
from src_core.propagate.masks import logits_to_mask, mask_stats, mask_to_logits, shift_logits
from src_core.propagate.motion import MotionModel, predicted_box
from src_core.propagate.standin import StandInSegmenter, ground_truth_lookup
from src_core.synthetic.videos import make_scene

SIZE = 128


def track(scene, prompts=None, labels=None, **kwargs):
    """Run propagation over a scene; (labels, results) with every FrameResult kept."""
    segmenter = StandInSegmenter(scene.labels_for_image)
    labels = np.zeros(scene.shape, np.int32) if labels is None else labels
    results = []
    with TrackingWriter(labels) as writer:
        for result in propagate(scene, segmenter, scene.prompts(0) if prompts is None else prompts, **kwargs):
            writer.write(result)
            results.append(result)
    return labels, results


def statuses_of(results, obj_id):
    return {r.frame: r.objects[obj_id].status for r in results if obj_id in r.objects}


@pytest.fixture(scope="module")
def crossing():
    scene = make_scene("crossing", size=SIZE)
    labels, results = track(scene)
    return scene, labels, results


@pytest.fixture(scope="module")
def reentry():
    scene = make_scene("reentry", size=SIZE)
    labels, results = track(scene)
    return scene, labels, results


# -- the targets with the stand-in --------------------------------------------


@pytest.mark.parametrize("fixture", ["crossing", "reentry"])
def test_standin_targets_crossing_and_reentry(fixture, request):
    scene, labels, _ = request.getfixturevalue(fixture)
    scores = evaluate(scene.ground_truth(), labels)
    assert scores.mean_j >= 0.9, scores.summary()
    assert scores.id_switches == 0, scores.summary()
    assert scores.pairing == {i: i for i in scene.obj_ids}  # every animal keeps its own id
    assert min(scores.j.values()) >= 0.85, scores.j


def test_occlusion_of_nine_frames_refound_with_its_id():
    scene = make_scene("occlusion", size=SIZE)
    gt = scene.ground_truth()
    hidden = [t for t in range(len(scene)) if not (gt[t] == 1).any()]
    assert 5 <= len(hidden) <= 10  # the scene hides animal 1 for up to 10 frames
    labels, results = track(scene)
    status = statuses_of(results, 1)
    assert all(status[t] == LOST for t in hidden)
    after = [t for t in range(hidden[-1] + 1, len(scene)) if status.get(t) == REFOUND]
    assert after, status
    back = after[0]
    assert back <= hidden[-1] + 4  # found again soon after it shows up
    # once re-found it is the same animal, with the same id, to the end
    for t in range(back, len(scene)):
        inter = np.count_nonzero((labels[t] == 1) & (gt[t] == 1))
        assert inter >= 0.7 * np.count_nonzero(gt[t] == 1), t
    scores = evaluate(gt, labels)
    assert scores.id_switches == 0 and scores.pairing[1] == 1


def test_reentry_statuses_lost_then_refound_then_tracked(reentry):
    scene, labels, results = reentry
    gt = scene.ground_truth()
    status = statuses_of(results, 1)
    absent = [t for t in range(len(scene)) if not (gt[t] == 1).any()]
    assert absent and all(status[t] == LOST for t in absent)
    refound = [t for t, s in status.items() if s == REFOUND]
    assert len(refound) == 1 and refound[0] > absent[-1]
    assert all(status[t] == TRACKED for t in range(refound[0] + 1, len(scene)))
    assert status[0] == KEY
    for r in results:
        for obj in r.objects.values():
            assert obj.status in STATUSES
            assert (obj.mask is None) == (obj.status == LOST)
            if obj.status == LOST:
                assert obj.reason and np.isnan(obj.score)


@pytest.fixture(scope="module")
def cells():
    scene = make_scene("cells", size=SIZE)
    labels, results = track(scene, divisions=True)
    return scene, labels, results


def test_cells_divide_into_daughters_with_new_ids(cells):
    scene, labels, results = cells
    daughters = {i: r.objects[i].parent for r in results for i in r.objects if r.objects[i].parent}
    assert sorted(daughters) == [6, 7] and set(daughters.values()) == {1}
    scores = evaluate(scene.ground_truth(), labels)
    assert scores.mean_j >= 0.9 and scores.id_switches == 0, scores.summary()


# -- directions, key frames, exclusivity --------------------------------------------


def test_forward_backward_both_cover_their_frames():
    scene = make_scene("crossing", size=SIZE)
    key, start, stop = 30, 12, 48
    prompts = scene.prompts(key)
    for direction, expected in (("forward", range(key, stop)), ("backward", range(key, start - 1, -1)),
                                ("both", None)):
        labels, results = track(scene, prompts, direction=direction, start=start, stop=stop)
        frames = [r.frame for r in results]
        pairs = [(r.frame, i) for r in results for i in r.objects]
        assert len(pairs) == len(set(pairs)), direction  # no frame and object done twice
        if expected is not None:
            assert frames == list(expected), direction
            assert all(r.direction == (1 if direction == "forward" else -1) for r in results)
            untouched = [t for t in range(len(scene)) if t not in expected]
            assert not labels[untouched].any(), direction
        else:
            # forward from the key frame, then back from it (the key frame comes once per pass)
            assert frames == list(range(key, stop)) + list(range(key, start - 1, -1))
            assert set(pairs) == {(t, i) for t in range(start, stop) for i in (1, 2, 3)}
            assert [r.step for r in results] == list(range(1, len(results) + 1))
            assert results[-1].total == len(results)
        done = np.array(sorted(set(frames)))
        scores = evaluate(scene.ground_truth()[done], labels[done])
        assert scores.mean_j >= 0.9 and scores.id_switches == 0, (direction, scores.summary())


def test_range_limits_the_frames_visited():
    scene = make_scene("crossing", size=SIZE)
    _, results = track(scene, scene.prompts(10), direction="both", start=5, stop=20)
    assert sorted(set(r.frame for r in results)) == list(range(5, 20))


def test_both_with_objects_first_prompted_on_different_frames():
    scene = make_scene("crossing", size=SIZE)
    prompts = scene.prompts(0, obj_ids=[1, 3]) + scene.prompts(25, obj_ids=[2])
    labels = np.zeros(scene.shape, np.int32)
    labels, results = track(scene, prompts, labels=labels, direction="both", context_labels=labels)
    seen = {}
    for r in results:
        for i in r.objects:
            seen.setdefault((r.frame, i), 0)
            seen[(r.frame, i)] += 1
    assert max(seen.values()) == 1  # no frame and object done twice
    assert all((t, 2) in seen for t in range(len(scene)))  # 2 followed back to frame 0
    scores = evaluate(scene.ground_truth(), labels)
    assert scores.mean_j >= 0.9 and scores.id_switches == 0, scores.summary()


@pytest.mark.parametrize("direction", ["forward", "backward", "both"])
def test_key_frames_are_never_overwritten(direction):
    scene = make_scene("crossing", size=SIZE)
    gt20 = scene.labels(20)
    # the user's correction on frame 20 differs from the ground truth the stand-in returns
    corrected = ndi.binary_erosion(gt20 == 1, iterations=2)
    prompts = scene.prompts(5) + [ObjectPrompt(frame=20, obj_id=1, mask=corrected),
                                  ObjectPrompt(frame=40, obj_id=3, points=[[10.0, 10.0]], labels=[0],
                                               box=_box(scene.labels(40) == 3))]
    labels, results = track(scene, prompts, direction=direction)
    at20 = [r.objects[1] for r in results if r.frame == 20 and 1 in r.objects]
    assert len(at20) == 1 and at20[0].status == KEY
    np.testing.assert_array_equal(labels[20] == 1, corrected)
    key40 = [r.objects[3] for r in results if r.frame == 40 and 3 in r.objects]
    assert len(key40) == 1 and key40[0].status == KEY
    np.testing.assert_array_equal(labels[40] == 3, key40[0].mask)


def test_an_object_erased_on_a_key_frame_is_lost_there_then_searched_for():
    scene = make_scene("crossing", size=SIZE)
    kept = scene.labels(20)
    kept[kept == 3] = 0  # the user erased object 3 on frame 20
    prompts = scene.prompts(0) + prompts_from_labels(kept, 20, key=True)
    labels, results = track(scene, prompts, key_frames=[20])
    status = statuses_of(results, 3)
    assert status[20] == LOST and not (labels[20] == 3).any()
    assert "key frame 20" in next(r.objects[3].reason for r in results if r.frame == 20)
    assert status[21] == REFOUND  # still there: found again next to where it was
    # without key_frames the tracker does not know frame 20 was corrected as a whole
    _, plain = track(scene, prompts, stop=21)
    assert statuses_of(plain, 3)[20] == TRACKED


def test_objects_never_share_pixels():
    scene = make_scene("crowd", size=SIZE)
    _, results = track(scene, search_frames=5, stop=40)
    overlaps = 0
    for r in results:
        masks = [o.mask for o in r.objects.values() if o.mask is not None]
        if len(masks) > 1:
            overlaps += int((np.sum(masks, axis=0) > 1).sum())
    assert overlaps == 0
    touching = sum(1 for r in results if len([o for o in r.objects.values() if o.mask is not None]) == 6)
    assert touching > 0.9 * len(results)


def test_key_masks_that_overlap_are_made_disjoint():
    scene = make_scene("crossing", size=SIZE)
    a = scene.labels(0) == 1
    b = ndi.binary_dilation(a, iterations=3)  # a second object drawn over the first
    _, results = track(scene, [ObjectPrompt(0, 1, mask=a), ObjectPrompt(0, 2, mask=b)], stop=3)
    first = results[0].objects
    assert not (first[1].mask & first[2].mask).any()


def _box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# -- z-stacks ---------------------------------------------------------------------------


def _ball_stack(z=24, size=64):
    """(Z, Y, X) uint8 stack with two blobs; object 1 on slices 4-15, object 2 on 9-20."""
    zz, yy, xx = np.mgrid[0:z, 0:size, 0:size]
    labels = np.zeros((z, size, size), np.int32)
    one = ((zz - 9.5) / 6.5) ** 2 + ((yy - 22) / 14) ** 2 + ((xx - 22) / 14) ** 2 <= 1
    two = ((zz - 14.5) / 6.5) ** 2 + ((yy - 42) / 13) ** 2 + ((xx - 44) / 13) ** 2 <= 1
    labels[one] = 1
    labels[two & ~one] = 2
    rng = np.random.default_rng(0)
    stack = (40 + rng.normal(0, 4, labels.shape) + 120 * (labels > 0)).clip(0, 255).astype(np.uint8)
    for k in range(z):  # make every slice unique for the lookup
        stack[k, 0, 0] = k
    return stack, labels


def test_volume_propagation_stops_where_objects_end():
    stack, gt = _ball_stack()
    segmenter = StandInSegmenter(ground_truth_lookup(list(stack), list(gt)), failure_rate=0.0)
    prompts = [ObjectPrompt(12, 1, points=[[22, 22]]), ObjectPrompt(12, 2, points=[[44, 42]])]
    volume = segment_volume(stack, segmenter, prompts)
    assert volume.shape == gt.shape and volume.dtype == np.int32
    for obj_id in (1, 2):
        want = {int(k) for k in np.flatnonzero((gt == obj_id).any(axis=(1, 2)))}
        got = {int(k) for k in np.flatnonzero((volume == obj_id).any(axis=(1, 2)))}
        assert got <= want and len(want - got) <= 2, (obj_id, sorted(want), sorted(got))
        inter = np.count_nonzero((volume == obj_id) & (gt == obj_id))
        union = np.count_nonzero((volume == obj_id) | (gt == obj_id))
        assert inter / union >= 0.85


def test_volume_generator_yields_slices_and_rejects_one_slice():
    stack, gt = _ball_stack()
    segmenter = StandInSegmenter(ground_truth_lookup(list(stack), list(gt)))
    slices = [r.frame for r in propagate_volume(stack, segmenter, [ObjectPrompt(12, 1, points=[[22, 22]])])]
    assert sorted(set(slices)) == list(range(len(stack)))
    with pytest.raises(ValueError, match="single slice"):
        propagate_volume(stack[:1], segmenter, [ObjectPrompt(0, 1, points=[[22, 22]])])
    with pytest.raises(ValueError, match="2D image"):
        segment_volume(stack[0], segmenter, [ObjectPrompt(0, 1, points=[[22, 22]])])


# -- outputs ------------------------------------------------------------------------------


def test_outputs_table_trajectories_tracks_and_overlay(tmp_path, reentry):
    scene, _, results = reentry
    labels = np.zeros(scene.shape, np.int32)
    table_csv, traj_csv = tmp_path / "table.csv", tmp_path / "trajectories.csv"
    with TrackingWriter(labels, table_csv, traj_csv, n_frames=len(scene)) as writer:
        for r in results:
            writer.write(r)
    data, graph = writer.close()

    with open(table_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == TABLE_COLUMNS
    for needed in ("frame", "id", "centroid_x", "centroid_y", "area", "score", "status"):
        assert needed in TABLE_COLUMNS
    assert {"bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"} <= set(TABLE_COLUMNS)
    assert len(rows) == sum(len(r.objects) for r in results)
    assert {row["status"] for row in rows} == {KEY, TRACKED, LOST, REFOUND}
    for row in rows[::7]:
        t, i = int(row["frame"]), int(row["id"])
        mask = labels[t] == i
        if row["status"] == LOST:
            assert not mask.any() and row["centroid_x"] == "" and row["area"] == "0"
            continue
        ys, xs = np.nonzero(mask)
        assert int(row["area"]) == mask.sum()
        assert abs(float(row["centroid_x"]) - xs.mean()) < 0.01 and abs(float(row["centroid_y"]) - ys.mean()) < 0.01
        assert (int(float(row["bbox_x0"])), int(float(row["bbox_y1"]))) == (xs.min(), ys.max())
    table = read_table(table_csv)
    assert len(table) == len(rows)

    with open(traj_csv, newline="") as f:
        wide = list(csv.reader(f))
    assert wide[0] == ["frame", "x1", "y1", "x2", "y2"]
    assert len(wide) == 1 + len(scene)
    lost_frames = [r.frame for r in results if r.objects[1].status == LOST]
    assert all(wide[1 + t][1] == "NaN" for t in lost_frames)
    t = 3
    ys, xs = np.nonzero(labels[t] == 2)
    assert abs(float(wide[1 + t][3]) - xs.mean()) < 0.01 and abs(float(wide[1 + t][4]) - ys.mean()) < 0.01

    # napari Tracks: (track_id, t, y, x), sorted by track then time, lost frames left out
    assert data.shape == (sum(1 for r in results for o in r.objects.values() if o.status != LOST), 4)
    assert np.all(np.diff(data[:, 0]) >= 0)
    assert not np.isin(data[data[:, 0] == 1, 1], lost_frames).any()
    assert graph == {}

    video = write_overlay_video(tmp_path / "overlay.mp4", scene, labels, fps=10, stop=12)
    from src_core.video import VideoFrames

    with VideoFrames(video) as frames:
        assert frames.shape == (12, SIZE, SIZE, 3)
        frame = np.asarray(frames[5]).astype(int)
    # the objects are tinted: their pixels differ from the grey original
    grey = np.asarray(scene[5]).astype(int)
    tinted = np.abs(frame - grey[..., None]).sum(axis=2)
    assert tinted[labels[5] == 2].mean() > 3 * tinted[labels[5] == 0].mean()


def test_tables_of_several_z_keep_their_position_column(tmp_path):
    from src_core.propagate import table_from_labels, write_table, write_trajectories

    labels = np.zeros((3, 20, 20), np.int32)
    labels[:, 2:6, 2:6] = 1
    labels[1:, 10:14, 12:18] = 2
    table = table_from_labels(labels)
    both = np.concatenate([table, table])
    zs = np.repeat([0, 4], len(table))
    path = write_table(tmp_path / "t.csv", both, position=("z", zs))
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == ["z", *TABLE_COLUMNS]
    back, where = read_table(path, position="z")
    assert (where == zs).all() and (back["centroid_x"] == both["centroid_x"]).all()
    assert len(read_table(path)) == len(both)  # the plain reader ignores the extra column
    with pytest.raises(ValueError, match="2 z values for a table of 10 rows"):
        write_table(tmp_path / "bad.csv", both, position=("z", [0, 1]))
    assert not (tmp_path / "bad.csv").exists()
    with open(write_trajectories(tmp_path / "w.csv", both, position=("z", zs)), newline="") as f:
        wide = list(csv.reader(f))
    assert wide[0] == ["frame", "x1_z0", "y1_z0", "x2_z0", "y2_z0", "x1_z4", "y1_z4", "x2_z4", "y2_z4"]
    assert wide[1][3] == "NaN" and float(wide[2][7]) == pytest.approx(14.5)


def test_tracks_graph_for_divisions(cells):
    _, _, results = cells
    writer = TrackingWriter(None)
    for r in results:
        writer.write(r)
    data, graph = writer.close()
    assert graph == {6: [1], 7: [1]}
    assert set(np.unique(data[:, 0]).astype(int)) == {1, 2, 3, 4, 5, 6, 7}


def test_should_stop_cancels_between_frames_and_keeps_what_was_yielded():
    from src_core.jobs import Cancelled

    scene = make_scene("crossing")
    seen = []
    run = propagate(scene, StandInSegmenter(scene.labels_for_image), scene.prompts(0),
                    should_stop=lambda: len(seen) >= 4)
    with pytest.raises(Cancelled, match="tracking was cancelled"):
        for result in run:
            seen.append(result.frame)
    assert seen == [0, 1, 2, 3]


def test_label_store_grows_with_frames_widens_and_converts(tmp_path):
    import zarr

    from src_core.propagate import (
        FrameResult, LabelStore, ObjectResult, export_npy, export_tiff, open_labels, smallest_label_dtype,
    )
    from src_core.propagate.labelstore import ensure_store

    assert [smallest_label_dtype(i) for i in (0, 255, 256, 70000)] == [np.uint8, np.uint8, np.uint16, np.uint32]
    path = tmp_path / "labels.zarr"
    store = LabelStore(path, (6, 40, 50))
    assert store.dtype == np.uint8 and store.frames_written() == []
    frame = np.zeros((40, 50), np.uint8)
    frame[5:9, 10:20] = 3
    store[2] = frame
    store[4] = np.zeros((40, 50), np.uint8)  # an empty frame holds no file
    assert store.frames_written() == [2]
    with pytest.raises(FileExistsError):
        LabelStore(path, (6, 40, 50))
    # an id past the type widens the store in place; what was there stays
    mask = np.zeros((40, 50), bool)
    mask[20:30, 20:30] = True
    paint_labels(store, FrameResult(3, {300: ObjectResult(300, "tracked", mask, 0.9, mask_stats(mask))}))
    assert store.dtype == np.uint16 and store[3][25, 25] == 300
    np.testing.assert_array_equal(store[2], frame)
    reopened = open_labels(path)
    assert reopened.dtype == np.uint16 and zarr.open_array(path, mode="r")[3, 25, 25] == 300
    with pytest.raises(ValueError, match="does not fit"):  # a plain array would wrap the id around
        paint_labels(np.zeros((6, 40, 50), np.uint8), FrameResult(3, {300: ObjectResult(300, "tracked", mask, 0.9,
                                                                                        mask_stats(mask))}))
    # conversions for other readers
    np.testing.assert_array_equal(np.load(export_npy(reopened, tmp_path / "l.npy")), np.asarray(reopened))
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(export_tiff(reopened, tmp_path / "l.tif")), np.asarray(reopened))
    assert isinstance(open_labels(tmp_path / "l.npy"), LabelFile)
    with pytest.raises(FileNotFoundError):
        open_labels(tmp_path / "missing.zarr")
    # a store shared by processes: opened as it is, refused when of another shape
    assert ensure_store(path, (6, 40, 50), np.uint32).dtype == np.uint16
    with pytest.raises(ValueError, match="holds labels of shape"):
        ensure_store(path, (7, 40, 50), np.uint32)


def test_label_file_round_trip_and_no_silent_overwrite(tmp_path):
    path = tmp_path / "labels.npy"
    labels = LabelFile(path, (5, 8, 9), np.uint16)
    frame = np.arange(72, dtype=np.uint16).reshape(8, 9)
    labels[3] = frame
    labels.close()
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[3], frame)
    assert not np.load(path)[[0, 1, 2, 4]].any()
    with pytest.raises(FileExistsError):
        LabelFile(path, (5, 8, 9))
    with LabelFile(path) as again:
        np.testing.assert_array_equal(again[3], frame)
        with pytest.raises(IndexError):
            again[5]


# -- bad input, partial results, resume ----------------------------------------------


class BrokenFrames:
    """A scene whose frames from ``broken`` on cannot be read (a truncated video)."""

    def __init__(self, scene, broken):
        self.scene, self.broken, self.shape = scene, broken, scene.shape

    def __len__(self):
        return len(self.scene)

    def __getitem__(self, t):
        if t >= self.broken:
            raise OSError(f"end of file reached while decoding frame {t}")
        return self.scene[t]


def test_unreadable_frame_stops_with_partial_results_kept_then_resume(tmp_path):
    scene = make_scene("crossing", size=SIZE)
    frames = BrokenFrames(scene, 25)
    segmenter = StandInSegmenter(scene.labels_for_image)
    labels = np.zeros(scene.shape, np.int32)
    table = tmp_path / "table.csv"
    with pytest.raises(PropagationError, match="frame 25") as info:
        with TrackingWriter(labels, table) as writer:
            for r in propagate(frames, segmenter, scene.prompts(0)):
                writer.write(r)
    assert info.value.frame == 25 and info.value.last_done == 24 and info.value.direction == 1
    assert "truncated" in str(info.value) and "Resume" in str(info.value)
    kept = read_table(table)
    assert sorted(set(kept["frame"].tolist())) == list(range(25))  # everything done is on disk
    assert labels[:25].any(axis=(1, 2)).all() and not labels[25:].any()

    # resume from the last frame done, seeded with its labels; the ids carry on
    seeds = prompts_from_labels(labels[24], 24)
    assert [p.key for p in seeds] == [False, False, False]
    with TrackingWriter(labels, table, resume=True) as writer:
        for r in propagate(scene, segmenter, seeds, start=24):
            if r.frame > 24:
                writer.write(r)
    final = read_table(table)
    assert sorted(set(final["frame"].tolist())) == list(range(len(scene)))
    assert len(final) == 3 * len(scene)
    scores = evaluate(scene.ground_truth(), labels)
    assert scores.mean_j >= 0.9 and scores.id_switches == 0, scores.summary()


def test_resume_goes_on_searching_for_an_object_lost_at_the_interruption():
    scene = make_scene("occlusion", size=SIZE)
    gt = scene.ground_truth()
    hidden = [t for t in range(len(scene)) if not (gt[t] == 1).any()]
    segmenter = StandInSegmenter(scene.labels_for_image)
    stop_at = hidden[3]  # the video breaks while animal 1 is behind the occluder
    labels = np.zeros(scene.shape, np.int32)
    with pytest.raises(PropagationError):
        for r in propagate(BrokenFrames(scene, stop_at), segmenter, scene.prompts(0)):
            paint_labels(labels, r)
    last = stop_at - 1
    assert not (labels[last] == 1).any()

    def resume(seeds):
        out, status = labels.copy(), {}
        for r in propagate(scene, segmenter, seeds, start=last):
            if r.frame > last:
                paint_labels(out, r)
            if 1 in r.objects:
                status[r.frame] = r.objects[1].status
        return out, status

    # the labels of the last frame alone forget animal 1: it is never looked for again
    _, status = resume(prompts_from_labels(labels[last], last))
    assert not status
    seeds = resume_prompts(labels, last)
    lost = {p.obj_id: p for p in seeds}[1]
    assert lost.lost_for >= 1 and not lost.key and len(lost.history) >= 5
    assert {p.obj_id: p.lost_for for p in seeds}[2] == 0
    resumed, status = resume(seeds)
    assert status[last] == LOST
    back = [t for t, s in status.items() if s == REFOUND]
    assert back and back[0] <= hidden[-1] + 4, status  # found again as soon as it comes out
    assert evaluate(gt, resumed).id_switches == 0
    # as if the run had not stopped
    uninterrupted, _ = track(scene)
    assert (resumed == uninterrupted).mean() > 0.999
    # lost for longer than the search lasts: given up, not resumed
    assert 1 not in {p.obj_id for p in resume_prompts(labels, last, search_frames=lost.lost_for - 1)}
    # backward runs look the other way
    assert {p.obj_id for p in resume_prompts(labels, hidden[0], direction=-1, search_frames=5)} == {2, 3}
    with pytest.raises(ValueError, match="lost seed"):
        ObjectPrompt(5, 1, mask=labels[0] == 2, lost_for=2)  # key by default


def test_bad_prompts_are_clear_errors():
    scene = make_scene("crossing", size=64)
    seg = StandInSegmenter(scene.labels_for_image)
    n = len(scene)
    with pytest.raises(ValueError, match="outside the 64x64 frame"):
        propagate(scene, seg, [ObjectPrompt(0, 1, points=[[70, 10]])])
    with pytest.raises(ValueError, match="box .* lies outside"):
        propagate(scene, seg, [ObjectPrompt(0, 1, box=[80, 80, 90, 90])])
    with pytest.raises(ValueError, match=f"only {n} frames"):
        propagate(scene, seg, [ObjectPrompt(n + 5, 1, points=[[10, 10]])])
    with pytest.raises(ValueError, match="used twice on frame 3"):
        propagate(scene, seg, [ObjectPrompt(3, 1, points=[[10, 10]]), ObjectPrompt(3, 1, points=[[20, 20]])])
    with pytest.raises(ValueError, match="no prompts"):
        propagate(scene, seg, [])
    with pytest.raises(ValueError, match="no prompt lies in frames 10 to 19"):
        propagate(scene, seg, [ObjectPrompt(0, 1, points=[[10, 10]])], start=10, stop=20)
    with pytest.raises(ValueError, match="direction"):
        propagate(scene, seg, scene.prompts(0), direction="sideways")
    with pytest.raises(ValueError, match="mask has shape"):
        propagate(scene, seg, [ObjectPrompt(0, 1, mask=np.ones((8, 8), bool))])
    with pytest.raises(ValueError, match="ids must be >= 1"):
        ObjectPrompt(0, 0, points=[[1, 1]])
    with pytest.raises(ValueError, match="no positive point"):
        ObjectPrompt(0, 1, points=[[1, 1]], labels=[0])
    with pytest.raises(ValueError, match="frames must be"):
        propagate(np.zeros((8, 8)), seg, [ObjectPrompt(0, 1, points=[[1, 1]])])


def test_prompt_files(tmp_path):
    prompts = [ObjectPrompt(0, 1, points=[[12.5, 8], [20, 9]], labels=[1, 0]),
               ObjectPrompt(4, 2, box=[1, 2, 30, 40]), ObjectPrompt(4, 1, points=[[3, 3]], key=False)]
    path = save_prompts(tmp_path / "p.json", prompts)
    back = load_prompts(path)
    assert [(p.frame, p.obj_id, p.key) for p in back] == [(0, 1, True), (4, 2, True), (4, 1, False)]
    np.testing.assert_array_equal(back[0].labels, [1, 0])
    np.testing.assert_allclose(back[1].box, [1, 2, 30, 40])
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"frame": 2, "id": 5, "points": [[1, 2]]}]))
    assert load_prompts(bare)[0].labels.tolist() == [1]
    table = tmp_path / "p.csv"
    table.write_text("frame,id,x,y,label\n0,1,5,6,1\n0,1,7,8,0\n3,2,9,9,\n")
    from_csv = load_prompts(table)
    assert [(p.frame, p.obj_id, len(p.points)) for p in from_csv] == [(0, 1, 2), (3, 2, 1)]
    assert from_csv[0].labels.tolist() == [1, 0]

    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        load_prompts(empty)
    none = tmp_path / "none.json"
    none.write_text('{"prompts": []}')
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(none)
    broken = tmp_path / "broken.json"
    broken.write_text('{"prompts": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prompts(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('[{"frame": 0, "points": [[1, 2]]}]')
    with pytest.raises(ValueError, match='prompt 0 must be an object with "frame" and "id"'):
        load_prompts(wrong)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.json")


# -- building blocks ------------------------------------------------------------------------


def test_logits_round_trip_and_shift():
    mask = np.zeros((60, 100), bool)
    mask[10:30, 20:50] = True
    logits = mask_to_logits(mask, 256)
    assert logits.shape == (1, 256, 256)
    back = logits_to_mask(logits, mask.shape)
    assert np.count_nonzero(back ^ mask) <= 0.05 * mask.sum()
    moved = logits_to_mask(shift_logits(logits, 20, 10, mask.shape), mask.shape)
    ys, xs = np.nonzero(moved)
    assert abs(xs.mean() - 54.5) < 1.5 and abs(ys.mean() - 29.5) < 1.5


def test_motion_model_and_predicted_box():
    motion = MotionModel(0.5)
    motion.reset((10.0, 10.0))
    for k in range(1, 6):
        motion.observe((10.0 + 3 * k, 10.0 - k))
    np.testing.assert_allclose(motion.predict(1), (28.0, 4.0), atol=1e-6)
    lost = motion.predict(3, lost=True)
    assert 25.0 + 3 < lost[0] < 25.0 + 9  # slows down while lost
    box = predicted_box((10, 10, 19, 29), np.array([5.0, -3.0]), 0.1, (40, 40))
    np.testing.assert_allclose(box, [13.0, 5.0, 27.0, 29.0])
    assert tuple(predicted_box((0, 0, 5, 5), np.array([-50.0, 0.0]), 0.1, (40, 40)))[2] > 0
