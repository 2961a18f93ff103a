"""The only modules that do I/O: stores, files and engines behind the protocols of ``ports``."""
