"""Pruning and quantization together: sequential, alternating and joint (latency-in-the-loop) pipelines, recipes.

Floor 4: pipelines call the plugins, the exporters and device_bench; nothing below imports them.
"""
