"""The main job (``provguard run``): the 2019 injunction's whole story on a platform.

Each stage is a function over plain tables and a decision point, in its own module; :mod:`.run`
wires them to the stores, the audit log and the report.
"""
