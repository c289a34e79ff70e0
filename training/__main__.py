"""``python -m training ...`` is ``ssl-zoo ...`` (for ``torchrun -m training train ...``)."""

from zoo.cli import main

raise SystemExit(main())
