"""Evaluation: per-sample metrics, feature extractors (toyworld probe, CLIP, DINO, Inception) and the
comparison report (CSV, Markdown, plots, W&B)."""
