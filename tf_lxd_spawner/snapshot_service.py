"""`python -m tf_lxd_spawner.snapshot_service`: the name 0.3.0's configurations run the users'
snapshots service by; the service itself is tf_lxd_spawner.operator.snapshot_service."""

from .operator.snapshot_service import main

if __name__ == "__main__":
    main()
