"""npedit: the command line over the corpus builder and the trainer."""

__version__ = "0.1.0"
