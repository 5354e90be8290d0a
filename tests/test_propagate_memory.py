"""``propagate`` with a SAM 2 video predictor: the memory backend's bookkeeping.

A SAM 2.1 tiny model with random weights at 128-px input: what it segments is
noise, so the assertions are about plumbing that would break visibly: which frames
and objects each pass yields, key frames kept exactly, masks that never overlap,
lost objects with a known cause, the resumable run and its files.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_core.model.sam2.sam2_base import build_sam2_model
from src_core.propagate import (
    KEY,
    LOST,
    REJECTION_CAUSES,
    STATUSES,
    ObjectPrompt,
    PropagationError,
    frames_visited,
    propagate,
)
from src_core.sam2_video import SAM2VideoPredictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    model = build_sam2_model("tiny", image_size=128, binarize_mask_from_pts_for_mem_enc=True).eval()
    with torch.no_grad():  # objects present most of the time
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 3.0
    return SAM2VideoPredictor(model)


def _video(n: int = 14) -> np.ndarray:
    frames = np.zeros((n, 48, 64), np.uint16)
    for t in range(n):
        frames[t, 10:26, 4 + 2 * t : 20 + 2 * t] = 3000
        frames[t, 30:44, 40:56] = 1500
    return frames


def _check_frame(result, shape) -> None:
    covered = np.zeros(shape, int)
    for obj in result.objects.values():
        assert obj.status in STATUSES
        if obj.status == LOST:
            assert obj.mask is None and obj.cause in REJECTION_CAUSES and obj.reason
        else:
            covered += obj.mask
    assert covered.max() <= 1  # masks of a frame never overlap


def test_both_directions_visit_each_frame_and_object_once(predictor):
    frames = _video()
    painted = np.zeros((48, 64), bool)
    painted[30:44, 40:56] = True
    prompts = [
        ObjectPrompt(frame=4, obj_id=1, points=np.array([[15.0, 18.0]]), labels=np.array([1])),
        ObjectPrompt(frame=9, obj_id=2, mask=painted),  # joins later, painted by the user
    ]
    seen: dict[tuple[int, int], str] = {}
    results = list(propagate(frames, predictor, prompts, direction="both"))
    for r in results:
        _check_frame(r, (48, 64))
        for obj_id, obj in r.objects.items():
            assert (r.frame, obj_id) not in seen, (r.frame, obj_id)  # each once
            seen[(r.frame, obj_id)] = obj.status
    # object 1 on every frame, object 2 on every frame (backward from 9)
    assert {t for t, i in seen if i == 1} == set(range(14))
    assert {t for t, i in seen if i == 2} == set(range(14))
    assert {r.frame for r in results} == frames_visited(prompts, "both", 0, 14)
    assert seen[(4, 1)] == KEY and seen[(9, 2)] == KEY
    key = next(r for r in results if r.frame == 9).objects[2]
    assert np.array_equal(key.mask, painted) and key.score == 1.0  # the user's mask, exactly
    assert results[-1].step == results[-1].total == len(results)
    # forward-only: object 2 starts on its own frame
    forward = list(propagate(frames, predictor, prompts, direction="forward"))
    assert [r.frame for r in forward] == list(range(4, 14))
    assert all(2 not in r.objects for r in forward if r.frame < 9)


def test_key_frame_without_an_object_loses_it_there(predictor):
    frames = _video(8)
    box = np.array([2.0, 8.0, 24.0, 28.0])
    prompts = [
        ObjectPrompt(frame=0, obj_id=1, box=box),
        ObjectPrompt(frame=0, obj_id=2, points=np.array([[48.0, 37.0]]), labels=np.array([1])),
        ObjectPrompt(frame=5, obj_id=2, points=np.array([[48.0, 37.0]]), labels=np.array([1])),
    ]
    results = {r.frame: r for r in propagate(frames, predictor, prompts, key_frames=[5])}
    assert results[5].objects[1].status == LOST and results[5].objects[1].cause == "not-on-key"
    assert results[5].objects[2].status == KEY


def test_unreadable_frame_raises_after_delivering_the_frames_before(predictor):
    class Broken:
        shape = (10, 48, 64)

        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 6:
                raise OSError("truncated")
            return _video(10)[i]

    prompts = [ObjectPrompt(frame=0, obj_id=1, points=np.array([[15.0, 18.0]]), labels=np.array([1]))]
    done = []
    with pytest.raises(PropagationError, match="could not read frame 6") as err:
        for r in propagate(Broken(), predictor, prompts):
            done.append(r.frame)
    assert done == list(range(6)) and err.value.frame == 6 and err.value.last_done == 5


def test_options_of_the_sam1_recipe_are_refused(predictor):
    prompts = [ObjectPrompt(frame=0, obj_id=1, points=np.array([[15.0, 18.0]]), labels=np.array([1]))]
    with pytest.raises(ValueError, match="divisions are detected with the SAM 1 recipe only"):
        propagate(_video(4), predictor, prompts, divisions=True)


def test_tracking_run_folder_with_sam2(predictor, tmp_path):
    """The resumable run writes the same files with either backend."""
    from src_core.propagate import open_labels, read_table
    from src_core.propagate.run import RunSettings, TrackingRun

    frames = _video(10)
    prompts = [ObjectPrompt(frame=2, obj_id=3, points=np.array([[15.0, 18.0]]), labels=np.array([1]))]
    run = TrackingRun(tmp_path / "run", RunSettings(input="clip", frames=10, prompts="one click", direction="both"))
    run.start(prompts, (48, 64))
    frames_done = [r.frame for r in run.track(frames, predictor, prompts)]
    assert sorted(set(frames_done)) == list(range(10))  # frame 2 twice: once a pass, as with SAM 1
    labels = open_labels(tmp_path / "run" / "labels.zarr")
    table = read_table(tmp_path / "run" / "table.csv")
    assert set(np.unique(np.asarray(labels[2]))) <= {0, 3}
    assert len(table) == 10


def test_interrupted_run_resumes_with_sam2(predictor, tmp_path):
    """An unreadable frame stops the run with what was done kept; the same run again
    (the storage back) goes on from there and fills every frame."""
    from src_core.propagate import open_labels
    from src_core.propagate.run import RunSettings, TrackingRun

    class Flaky:
        shape = (10, 48, 64)
        broken = True

        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 7 and self.broken:
                raise OSError("network storage went away")
            return _video(10)[i]

    frames = Flaky()
    prompts = [ObjectPrompt(frame=0, obj_id=5, points=np.array([[15.0, 18.0]]), labels=np.array([1]))]
    settings = RunSettings(input="clip", frames=10, prompts="p", direction="forward", model="sam2.1_hiera_tiny")
    run = TrackingRun(tmp_path / "run", settings)
    run.start(prompts, (48, 64))
    done = []
    with pytest.raises(PropagationError):
        for r in run.track(frames, predictor, prompts):
            done.append(r.frame)
    assert done == list(range(7))
    frames.broken = False
    again = TrackingRun(tmp_path / "run", settings)
    assert again.started and not again.complete
    rest = [r.frame for r in again.track(frames, predictor, prompts)]
    assert rest[0] == 6 and rest[-1] == 9  # from the last frame done (its labels seed the object)
    assert again.complete
    labels = open_labels(tmp_path / "run" / "labels.zarr")
    assert all((np.asarray(labels[t]) == 5).any() for t in range(10))
