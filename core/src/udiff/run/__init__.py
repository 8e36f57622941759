"""The run layer: a run directory's layout, atomic files, components saved and loaded,
resumable checkpoints and the run lock."""
