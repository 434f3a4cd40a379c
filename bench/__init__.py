"""Benchmarks that print their figures and save them under bench/results/."""
