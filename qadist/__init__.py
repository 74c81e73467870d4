"""qadist: distil a large extractive-QA teacher ensemble into a small, fast student on Ray."""

__version__ = "0.1.0"
