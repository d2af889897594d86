"""The ``goalhorn`` command line: parses, calls library code, renders."""
