"""Built-in tasks: data, outcome rewards and the assets that go with them (``mlx_vgb.tasks.dyck``)."""

REWARDS = {"dyck": "mlx_vgb.tasks.dyck:reward"}
