"""``python -m bench``: avcm's performance as ratios measured side by side in one run."""
