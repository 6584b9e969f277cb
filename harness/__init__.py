"""segbench: a plugin-extensible benchmark harness for semi-supervised ultrasound segmentation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segbench")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
