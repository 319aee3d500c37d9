"""`python -m emotion.prepare --dataset affectnet --data-dir D --preset b4`: build the prepared Arrow cache once."""
from emotion.cli import prepare_main

if __name__ == "__main__":
    raise SystemExit(prepare_main())
