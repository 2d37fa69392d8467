"""The lmms-eval smoke test is collected only where lmms-eval is installed: ``make test-lmms-eval`` builds its own
virtual environment (``.venv-lmms``, about 3 GB) for it, so the default ``pytest`` run in ``.venv`` never sees it.

(The folder is not called ``lmms_eval``: pytest puts ``tests/`` on ``sys.path``, and a folder of that name would
then import as an empty namespace package ``lmms_eval`` wherever the real one is absent.)
"""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("lmms_eval") is not None else ["test_*.py"]
