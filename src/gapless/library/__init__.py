"""Library mode: a Python server that upgrades itself (:class:`gapless.Upgrader`)."""
