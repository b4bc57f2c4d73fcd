"""sod: a small-object detection pipeline (data levers, SR front end, tuned detector, COCO AP by size)."""

__version__ = "0.1.0"
