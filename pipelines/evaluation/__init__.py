"""Offline, prequential evaluation of the three views and the report it leaves."""
