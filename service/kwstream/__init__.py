"""kwstream: streaming keyword spotting with live metrics."""

__version__ = "0.1.0"
