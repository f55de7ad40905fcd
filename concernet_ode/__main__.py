"""``python -m concernet_ode reproduce ...`` runs the ``concernet-ode`` command."""

import sys

from .cli import main

sys.exit(main())
