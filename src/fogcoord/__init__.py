"""fogcoord: a fog-computing coordinator."""

__version__ = "0.1.0"
