"""Pure decision code on frozen snapshots: the model, sizes, origins, zones and plans. No I/O."""
