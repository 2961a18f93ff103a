"""Command-line shells: thin wrappers that parse options, call the core and print with Rich."""
