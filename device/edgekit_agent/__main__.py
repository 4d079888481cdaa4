"""``python -m edgekit_agent`` = ``edgekit-agent`` (handy where the console script is not on PATH)."""

import sys

from edgekit_agent.cli.app import main

sys.exit(main())
