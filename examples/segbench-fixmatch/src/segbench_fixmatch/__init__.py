"""segbench-fixmatch: the FixMatch method and an attention U-Net backbone, as a segbench plugin."""

__version__ = "0.1.0"
