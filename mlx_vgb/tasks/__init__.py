"""Built-in tasks: data, outcome rewards and the assets that go with them (``dyck``, ``testcases``, ``humaneval``, ``code``)."""

REWARDS = {
    "dyck": "mlx_vgb.tasks.dyck:reward",
    "testcases": "mlx_vgb.tasks.testcases:reward",
    "humaneval": "mlx_vgb.tasks.code:reward",
}
