"""The speed layer: one worker, a consumer group of one or more, learning the stream online."""
