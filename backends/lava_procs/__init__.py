"""Lava Processes and ProcessModels of spikeforge (imports lava; only process code here)."""
