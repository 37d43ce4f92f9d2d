"""Read models built from the event log: tables, idempotent apply, checkpoints, rebuild."""
