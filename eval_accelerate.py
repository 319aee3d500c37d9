"""Evaluate a saved model: `python eval_accelerate.py --model results/RUN/best_model`."""
from emotion.cli import eval_main

if __name__ == "__main__":
    raise SystemExit(eval_main())
