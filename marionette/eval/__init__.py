"""Object-representation evaluation (the MOC / SPACE-Time protocol, without its bugs).

Predicted objects are the present slots of the hard decomposition with their global
alpha-footprint boxes; each gets the class of the ground-truth box it covers (intersection /
box area >= 0.5). On top: few-shot accuracy, AMI / ARI of k-means, sprite purity, detection
precision / recall / F-score and AP, temporal consistency and foreground ARI.
"""

from .boxes import box_area, box_intersection, box_iou, box_overlap
from .evaluation import (
    METRICS,
    Metric,
    View,
    check_groundtruth,
    evaluate,
    first_frames,
    flatten_metrics,
    summary,
    summary_keys,
    temporal_consistency,
    write_metrics,
)
from .labels import HUD_FILTERS, NO_LABEL, VIEWS, assign_labels, view_labels
from .metrics import (
    SHOTS,
    average_precision,
    clustering_scores,
    few_shot_accuracy,
    foreground_ari,
    precision_recall,
    sprite_purity,
    sprite_recovery,
    sprites_per_class,
)
from .objects import OVERLAP, ObjectTable, collect_objects, slot_segmentation, suppress_overlaps

__all__ = [
    "HUD_FILTERS",
    "METRICS",
    "NO_LABEL",
    "OVERLAP",
    "SHOTS",
    "VIEWS",
    "Metric",
    "ObjectTable",
    "View",
    "assign_labels",
    "average_precision",
    "box_area",
    "box_intersection",
    "box_iou",
    "box_overlap",
    "check_groundtruth",
    "clustering_scores",
    "collect_objects",
    "evaluate",
    "few_shot_accuracy",
    "first_frames",
    "flatten_metrics",
    "foreground_ari",
    "precision_recall",
    "slot_segmentation",
    "sprite_purity",
    "sprite_recovery",
    "sprites_per_class",
    "summary",
    "summary_keys",
    "suppress_overlaps",
    "temporal_consistency",
    "view_labels",
    "write_metrics",
]
