"""What ``--smoke`` means for the toy-world benches: the whole bench on a table of one image per class, domain and
split, one shot and one epoch, so tests/integration/test_benches.py runs every bench in seconds and none can rot unseen.
The numbers a smoke run prints mean nothing; only that every path of the bench ran."""

SMOKE_COUNTS = {"train": 1, "val": 1, "test": 1}  # images per class and domain (the default world: 24 / 8 / 20)
SMOKE_OVERRIDES = ["splits.shots=1", "splits.val_shots=1", "train.epochs=1", "train.lora.iters_per_shot=0"]
SMOKE_HELP = "seconds: 1 image per class, domain and split, 1 shot, 1 epoch, one seed (the numbers mean nothing)"
