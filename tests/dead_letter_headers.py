"""Reading a dead letter back, for assertions."""


def dead_letter_reason(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """The dlq.* headers of a consumed dead-letter record, decoded."""
    return {name: value.decode() for name, value in headers if name.startswith("dlq.")}
