"""``python -m hero_adapters.cli``: the ``hero`` command."""

from . import main

raise SystemExit(main())
