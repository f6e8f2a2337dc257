"""``python -m sparsetrain`` (used by torchrun)."""
from .cli import main

raise SystemExit(main())
