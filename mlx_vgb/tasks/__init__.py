"""Built-in tasks: data, outcome rewards and the assets that go with them (``dyck``, ``testcases``, ``humaneval``, ``code``, ``testcase_law``)."""

REWARDS = {
    "dyck": "mlx_vgb.tasks.dyck:reward",
    "testcases": "mlx_vgb.tasks.testcases:reward",
    "humaneval": "mlx_vgb.tasks.code:reward",
    "testcase_law": "mlx_vgb.tasks.testcase_law:reward",
    "testcase_law_exact": "mlx_vgb.tasks.testcase_law:reward_exact",
}
