"""Prefect flows over the DVC pipeline: ``pipeline`` (the DAG) and ``ablation`` (a grid of variants)."""
