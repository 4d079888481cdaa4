"""The device bundle: written by :mod:`.writer`, signed with :mod:`.keys`, examined by :mod:`.inspection`."""
