"""What every layer may share: settings types, durable writes, the event schema's limits and
process supervision. It imports nothing from the project's other packages."""
