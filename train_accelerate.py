"""Train the facial-expression model: `python train_accelerate.py --help` (or `accelerate launch train_accelerate.py ...`)."""
from emotion.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
