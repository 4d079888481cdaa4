"""Over-the-air updates: the transfer, switch and rollback (:mod:`.manager`), the on-disk slots and pointer that
survive a crash (:mod:`.slots`) and the health window's verdict (:mod:`.health`)."""
