"""Propagation and tracking: objects prompted on key frames, carried through videos and stacks.

Typical use::

    from src_core.propagate import ObjectPrompt, propagate, TrackingWriter

    prompts = [ObjectPrompt(frame=0, obj_id=1, points=[[120, 80]]),
               ObjectPrompt(frame=0, obj_id=2, box=[10, 20, 60, 45])]
    labels = LabelStore("labels.zarr", frames.shape[:3])   # on disk; or a numpy array
    with TrackingWriter(labels, "table.csv", "trajectories.csv") as writer:
        for result in propagate(frames, predictor, prompts, direction="both", context_labels=labels):
            writer.write(result)                           # a GUI: update layers, check cancel
    data, graph = writer.close()                           # napari Tracks

Modules: :mod:`.prompts` (what the user gives, recipes, prompt files),
:mod:`.tracker` (the generator), :mod:`.qc`, :mod:`.motion`, :mod:`.outputs`,
:mod:`.labelstore` (labels on disk), :mod:`.run` (a resumable run in a folder),
:mod:`.volume` (z-stacks), and the measurement tools :mod:`.synthetic`
(ground-truth scenes), :mod:`.standin` (ground-truth segmenter) and
:mod:`.metrics`.
"""

from __future__ import annotations

from .frames import FrameReader, FrameReadError
from .labelfile import LabelFile
from .labelstore import (
    LabelStore,
    export_npy,
    export_tiff,
    open_labels,
    smallest_label_dtype,
)
from .metrics import TrackingEvaluator, TrackingScores, evaluate
from .outputs import (
    TABLE_COLUMNS,
    TrackingWriter,
    overlay_frames,
    paint_labels,
    read_table,
    table_from_labels,
    tracks_data,
    write_overlay_video,
    write_table,
    write_trajectories,
)
from .passes import PassPlan, frames_visited, plan_passes
from .prompts import (
    DEFAULT_RECIPE,
    RECIPES,
    ObjectPrompt,
    PromptRecipe,
    check_prompts,
    get_recipe,
    load_prompts,
    prompts_from_labels,
    resume_prompts,
    save_prompts,
)
from .qc import ACCEPT_ALL, LENIENT, REJECTION_CAUSES, QualityControl, Rejection
from .results import (
    DIVIDED,
    KEY,
    LOST,
    REFOUND,
    STATUSES,
    TRACKED,
    FrameResult,
    ObjectResult,
    PropagationError,
)
from .tracker import DIRECTIONS, propagate
from .volume import VOLUME_QC, propagate_volume, segment_volume

__all__ = [
    "ACCEPT_ALL", "LENIENT", "REJECTION_CAUSES", "Rejection", "LabelStore", "export_npy", "export_tiff",
    "open_labels", "smallest_label_dtype", "PassPlan", "frames_visited", "plan_passes", "DEFAULT_RECIPE", "DIRECTIONS", "DIVIDED", "KEY", "LOST", "RECIPES", "REFOUND", "STATUSES",
    "TABLE_COLUMNS", "TRACKED", "VOLUME_QC", "FrameReadError", "FrameReader", "FrameResult", "LabelFile", "ObjectPrompt",
    "ObjectResult", "PromptRecipe", "PropagationError", "QualityControl", "TrackingEvaluator", "TrackingScores",
    "TrackingWriter", "check_prompts", "evaluate", "get_recipe", "load_prompts", "overlay_frames",
    "paint_labels", "propagate", "propagate_volume", "prompts_from_labels", "read_table", "resume_prompts",
    "save_prompts", "segment_volume", "table_from_labels", "tracks_data", "write_overlay_video", "write_table",
    "write_trajectories",
]
