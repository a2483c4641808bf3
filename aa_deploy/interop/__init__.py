"""Bridges from aa-deploy run folders to other tools' formats (AdapterHub's ``adapters`` library ...).

Each bridge lives in its own module and is imported only when used, so that the package adds no
import cost to the server or to ``aa-deploy --help``.
"""
