"""One module per transformer type; each exposes `execute(config, inputs, ctx) -> dict`."""
