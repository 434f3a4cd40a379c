"""What a query's text may be: the stream's validation and the HTTP schemas both use this."""

from typing import Annotated

from pydantic import StringConstraints

# Characters of a query's text after trimming; longer texts are refused everywhere.
MAX_TEXT_CHARS = 1000
# Bytes of one Kafka message; a bigger one is dead-lettered before it is parsed.
MAX_MESSAGE_BYTES = 16 * 1024

QueryText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)
]
