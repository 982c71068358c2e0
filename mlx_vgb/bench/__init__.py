"""Benchmarks: ``mlx-vgb bench TASK`` (one module per task, see ``mlx_vgb.bench.cli``)."""
