"""``python -m avcm.testing``: replay a recorded schedule, or check a driver's conformance."""

from ._cli import main

raise SystemExit(main())
