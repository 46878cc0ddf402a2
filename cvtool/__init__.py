"""cvtool: computer-vision training experiments from YAML recipes."""

__version__ = "0.1.0"
