"""Grading: attacks (pure functions) and the scorecard."""
