"""Compute jobs: the persisted workflow from submission to verified, paid results."""
