"""Scoring a store against a manifest, and the reports, contact sheets and pages that show it."""

# The largest threshold --evaluate scores (0 to it), here rather than in scoring: search.py's
# options name it, and a one-shot search loads none of the evaluation (nor gather's sources).
MAX_THRESHOLD = 16
