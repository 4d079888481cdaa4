"""``python -m edgekit_agent.cli``."""

import sys

from edgekit_agent.cli.app import main

sys.exit(main())
