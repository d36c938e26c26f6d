"""The driver of `scripts/bench`: processes, fixtures, measurements and the report.

Only the standard library: the driver runs under any Python 3.11; pfsmount and the user
programs in `usercode/` run under .venv/bin/python.
"""
