"""The edgekit exception hierarchy (shared with the device agent, which defines it)."""

from edgekit_agent.errors import *  # noqa: F401,F403
from edgekit_agent.errors import ExitStatus, EdgekitError, exit_status_for  # noqa: F401
